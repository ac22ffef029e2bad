-- Sign-in looks accounts up case-insensitively (`lower(email) = $1`): accounts imported from
-- POC-2 keep their emails byte-identical, upper case included.
CREATE INDEX IF NOT EXISTS "users_email_lower_idx" ON "users" (lower("email"));
