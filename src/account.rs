//! How an account is named, everywhere: in messages, log spans, `status`, `sync`'s summary
//! lines, the report and the errors of `export` and `report`.

use std::fmt;

use crate::config::AccountConfig;

/// An account's name for people: `customer 42 / sub-account 7 (acme)`, the sub-account and
/// the name only when there are some. The alternate form (`{:#}`) is the compact one that
/// tables and lists use: `42 / 7 (acme)`.
///
/// Metrics name accounts by their ids (`customer_id`, `sub_account_id` labels) instead: a
/// Prometheus label is matched, not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLabel {
    customer_id: i64,
    sub_account_id: Option<i64>,
    name: Option<String>,
}

impl AccountLabel {
    pub fn new(customer_id: i64, sub_account_id: Option<i64>, name: Option<String>) -> Self {
        AccountLabel {
            customer_id,
            sub_account_id,
            name,
        }
    }

    /// A configured account, with its name.
    pub fn of(account: &AccountConfig) -> Self {
        Self::new(
            account.customer_id,
            account.sub_account_id,
            account.name.clone(),
        )
    }
}

impl fmt::Display for AccountLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compact = f.alternate();
        if !compact {
            f.write_str("customer ")?;
        }
        write!(f, "{}", self.customer_id)?;
        if let Some(sub) = self.sub_account_id {
            let prefix = if compact { "" } else { "sub-account " };
            write!(f, " / {prefix}{sub}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::AccountLabel;

    #[test]
    fn an_account_is_named_by_customer_then_sub_account_then_name() {
        let full = AccountLabel::new(42, Some(7), Some("acme".into()));
        assert_eq!(full.to_string(), "customer 42 / sub-account 7 (acme)");
        assert_eq!(format!("{full:#}"), "42 / 7 (acme)");
        let bare = AccountLabel::new(42, None, None);
        assert_eq!(bare.to_string(), "customer 42");
        assert_eq!(format!("{bare:#}"), "42");
        let named = AccountLabel::new(5, None, Some("globex".into()));
        assert_eq!(named.to_string(), "customer 5 (globex)");
        assert_eq!(format!("{named:#}"), "5 (globex)");
    }
}
