DROP TABLE IF EXISTS "payment_transactions";
DROP TABLE IF EXISTS "payments";
DROP TYPE IF EXISTS "PaymentType";
DROP TYPE IF EXISTS "PaymentStatus";
