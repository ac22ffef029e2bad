DROP INDEX IF EXISTS "refresh_tokens_family_id_idx";
ALTER TABLE "refresh_tokens"
    DROP COLUMN IF EXISTS "device_id",
    DROP COLUMN IF EXISTS "revoked_at",
    DROP COLUMN IF EXISTS "rotated_at",
    DROP COLUMN IF EXISTS "family_id";
