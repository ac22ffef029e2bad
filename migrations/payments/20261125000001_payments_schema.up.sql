-- payments_db: payments and payment_transactions carried over from the legacy database column
-- for column. sender_id/recipient_id name users of auth_db: plain text, indexed, no foreign key
-- (no foreign key crosses a service boundary).

CREATE TYPE "PaymentStatus" AS ENUM ('pending', 'processing', 'completed', 'failed', 'cancelled');
CREATE TYPE "PaymentType" AS ENUM ('instant', 'scheduled', 'recurring');

CREATE TABLE "payments" (
    "id" TEXT NOT NULL,
    "sender_id" TEXT NOT NULL,
    "recipient_id" TEXT,
    "amount" DECIMAL(19,4) NOT NULL,
    "currency" TEXT NOT NULL DEFAULT 'USD',
    "status" "PaymentStatus" NOT NULL DEFAULT 'pending',
    "type" "PaymentType" NOT NULL DEFAULT 'instant',
    "description" TEXT,
    "psp_transaction_id" TEXT,
    "metadata" JSONB,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMP(3) NOT NULL,
    "completed_at" TIMESTAMP(3),
    CONSTRAINT "payments_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "payment_transactions" (
    "id" TEXT NOT NULL,
    "payment_id" TEXT NOT NULL,
    "status" "PaymentStatus" NOT NULL,
    "status_message" TEXT,
    "psp_transaction_id" TEXT,
    "metadata" JSONB,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "payment_transactions_pkey" PRIMARY KEY ("id")
);

CREATE INDEX "payments_sender_id_idx" ON "payments"("sender_id");
CREATE INDEX "payments_recipient_id_idx" ON "payments"("recipient_id");
CREATE INDEX "payments_created_at_idx" ON "payments"("created_at");
CREATE INDEX "payment_transactions_payment_id_idx" ON "payment_transactions"("payment_id");

ALTER TABLE "payment_transactions" ADD CONSTRAINT "payment_transactions_payment_id_fkey"
    FOREIGN KEY ("payment_id") REFERENCES "payments"("id") ON DELETE CASCADE ON UPDATE CASCADE;
