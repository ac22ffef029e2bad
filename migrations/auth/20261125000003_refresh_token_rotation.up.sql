-- Refresh-token rotation with reuse detection (SPEC §4): every token belongs to a family (one
-- sign-in); rotating stamps `rotated_at` on the old token and issues a new one in the same
-- family; presenting a rotated token again revokes the whole family (`revoked_at`).
--
-- These columns are APPENDED after the legacy columns and are all nullable: the data migration
-- copies only the legacy columns (in legacy order), and migrated tokens simply have no family
-- yet (the auth service treats a NULL family as a family of one, keyed by the token id).
ALTER TABLE "refresh_tokens"
    ADD COLUMN "family_id" TEXT,
    ADD COLUMN "rotated_at" TIMESTAMP(3),
    ADD COLUMN "revoked_at" TIMESTAMP(3),
    ADD COLUMN "device_id" TEXT;

CREATE INDEX "refresh_tokens_family_id_idx" ON "refresh_tokens"("family_id");
