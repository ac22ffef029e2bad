DROP TABLE IF EXISTS "user_profiles";
