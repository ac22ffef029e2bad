//! The carried-over tables (SPEC §5): which split database each goes to, its legacy columns in
//! legacy order, and the columns that name a user of auth_db once the data is split.
//!
//! Column lists are the contract, not read from either catalog: the split schemas may append
//! columns (refresh_tokens gains family_id, rotated_at, ...), and only the legacy columns move.

use crate::config::DbService;

/// One legacy table and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub name: &'static str,
    pub service: DbService,
    /// Legacy columns in legacy order; the first is the text primary key `id`.
    pub columns: &'static [&'static str],
    /// Columns holding an `auth_db.users.id` after the split (no foreign key enforces them there).
    pub user_refs: &'static [&'static str],
}

/// Every carried-over table in foreign-key order: a table comes after the tables it references
/// inside its own service (users before refresh_tokens, payments before payment_transactions).
pub const TABLES: [TableSpec; 7] = [
    TableSpec {
        name: "users",
        service: DbService::Auth,
        columns: &["id", "email", "password_hash", "name", "role", "email_verified", "created_at", "updated_at"],
        user_refs: &[],
    },
    TableSpec {
        name: "refresh_tokens",
        service: DbService::Auth,
        columns: &["id", "user_id", "token", "expires_at", "created_at"],
        user_refs: &[],
    },
    TableSpec {
        name: "payments",
        service: DbService::Payments,
        columns: &[
            "id",
            "sender_id",
            "recipient_id",
            "amount",
            "currency",
            "status",
            "type",
            "description",
            "psp_transaction_id",
            "metadata",
            "created_at",
            "updated_at",
            "completed_at",
        ],
        user_refs: &["sender_id", "recipient_id"],
    },
    TableSpec {
        name: "payment_transactions",
        service: DbService::Payments,
        columns: &["id", "payment_id", "status", "status_message", "psp_transaction_id", "metadata", "created_at"],
        user_refs: &[],
    },
    TableSpec {
        name: "audit_logs",
        service: DbService::Admin,
        columns: &[
            "id",
            "user_id",
            "action",
            "resource_type",
            "resource_id",
            "details",
            "ip_address",
            "user_agent",
            "created_at",
        ],
        user_refs: &["user_id"],
    },
    TableSpec {
        name: "system_config",
        service: DbService::Admin,
        columns: &["id", "key", "value", "description", "updated_at", "updated_by"],
        user_refs: &["updated_by"],
    },
    TableSpec {
        name: "user_profiles",
        service: DbService::Profile,
        columns: &["id", "user_id", "avatar_url", "phone", "address", "bio", "preferences", "created_at", "updated_at"],
        user_refs: &["user_id"],
    },
];

impl TableSpec {
    /// `"id", "email", ...` for SQL.
    pub fn column_list(&self) -> String {
        self.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    }

    /// The quoted table name.
    pub fn ident(&self) -> String {
        quote_ident(self.name)
    }

    /// `auth_db.users`, for reports and errors.
    pub fn label(&self) -> String {
        format!("{}.{}", self.service.component().name(), self.name)
    }
}

/// The tables of the given services, in foreign-key order.
pub fn tables_of(services: &[DbService]) -> Vec<&'static TableSpec> {
    TABLES.iter().filter(|t| services.contains(&t.service)).collect()
}

/// The table named `name`, if it is carried over.
pub fn table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}

/// `--service S` → that split service; none → all four. The legacy database is the source and
/// never a target.
pub fn parse_services(service: Option<&str>) -> anyhow::Result<Vec<DbService>> {
    match service {
        None => Ok(DbService::SPLIT.to_vec()),
        Some(s) => {
            let db = DbService::parse(s)?;
            if db == DbService::Legacy {
                anyhow::bail!("--service legacy: the legacy database is the source of the migration, not a target — use one of: auth, payments, admin, profile");
            }
            Ok(vec![db])
        }
    }
}

/// Double-quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_starts_with_its_id_and_comes_after_the_tables_it_references_in_its_service() {
        for t in &TABLES {
            assert_eq!(t.columns[0], "id", "{}", t.name);
        }
        let pos = |n: &str| TABLES.iter().position(|t| t.name == n).unwrap();
        assert!(pos("users") < pos("refresh_tokens"));
        assert!(pos("payments") < pos("payment_transactions"));
    }

    #[test]
    fn the_legacy_database_is_refused_as_a_target_service() {
        let err = parse_services(Some("legacy")).unwrap_err().to_string();
        assert!(err.contains("source of the migration"), "{err}");
        assert_eq!(parse_services(Some("payments_db")).unwrap(), vec![DbService::Payments]);
        assert_eq!(parse_services(None).unwrap().len(), 4);
    }
}
