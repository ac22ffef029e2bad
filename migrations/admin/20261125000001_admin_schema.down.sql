DROP TABLE IF EXISTS "system_config";
DROP TABLE IF EXISTS "audit_logs";
