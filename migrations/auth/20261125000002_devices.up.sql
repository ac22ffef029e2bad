-- Device sessions (new in the split; seed plan 7.2.1). One row per (user, browser/app install):
-- `device_id` is the client-generated id, `refresh_family_id` the refresh-token family issued to
-- that device, so revoking a device revokes exactly its tokens. `revoked_at` marks a logged-out
-- device; the row stays for the audit trail until the user's next sign-in from it.
CREATE TABLE "devices" (
    "id" TEXT NOT NULL,
    "user_id" TEXT NOT NULL,
    "device_id" TEXT NOT NULL,
    "name" TEXT,
    "device_type" TEXT,
    "user_agent" TEXT,
    "ip_address" TEXT,
    "refresh_family_id" TEXT,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "last_seen_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "revoked_at" TIMESTAMP(3),
    CONSTRAINT "devices_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "devices_user_id_device_id_key" ON "devices"("user_id", "device_id");
CREATE INDEX "devices_refresh_family_id_idx" ON "devices"("refresh_family_id");

ALTER TABLE "devices" ADD CONSTRAINT "devices_user_id_fkey"
    FOREIGN KEY ("user_id") REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;
