-- The device contract of seed plan 7.2.1 (SPEC §10): the seed's Device model names its columns
-- device_name, device_type and last_active_at, and its API answers with exactly those fields
-- (deviceName, deviceType, lastActiveAt). `device_type` was already there; the other two are
-- renamed so the table, the SQL and the JSON say the same thing. Renames keep every row and
-- are metadata-only (no table rewrite). devices has no legacy home, so `mfe migrate` never
-- copies it and no POC-2 column order is at stake.
ALTER TABLE "devices" RENAME COLUMN "name" TO "device_name";
ALTER TABLE "devices" RENAME COLUMN "last_seen_at" TO "last_active_at";

