-- Event hub tables (owned by the mfe-events crate; see services/events).
-- event_outbox: events written in the same transaction as the business change; a relay
-- publishes them with publisher confirms and stamps published_at.
CREATE TABLE event_outbox (
    id            uuid        PRIMARY KEY,          -- the envelope's event id
    routing_key   text        NOT NULL,             -- = event type, e.g. payments.payment.created
    envelope      jsonb       NOT NULL,             -- the whole SPEC §7 envelope
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text        NULL
);
CREATE INDEX event_outbox_pending_idx ON event_outbox (created_at) WHERE published_at IS NULL;

-- processed_events: one row per (consumer, event id) handled, written in the handler's
-- transaction, so a redelivered event is recognised and skipped.
CREATE TABLE processed_events (
    consumer      text        NOT NULL,
    event_id      uuid        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
