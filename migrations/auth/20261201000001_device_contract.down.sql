ALTER TABLE "devices" RENAME COLUMN "last_active_at" TO "last_seen_at";
ALTER TABLE "devices" RENAME COLUMN "device_name" TO "name";
