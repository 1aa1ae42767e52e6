//! The store's errors.

/// Everything a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist — or exists in another org, which callers must not be able
    /// to tell apart.
    #[error("{what} not found")]
    NotFound { what: String },
    /// A uniqueness rule would be broken (mapped from both backends' unique violations),
    /// or the operation does not fit the current state (deleting a non-empty org).
    #[error("conflict: {what}")]
    Conflict { what: String },
    /// The caller's input is not acceptable (empty name, malformed event, bad cursor).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Migrations could not be loaded or applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database failure.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        StoreError::NotFound { what: what.into() }
    }

    pub(crate) fn conflict(what: impl Into<String>) -> Self {
        StoreError::Conflict { what: what.into() }
    }

    /// Turns a unique violation into [`StoreError::Conflict`] naming `what`; anything else
    /// stays a database error. Both drivers report the SQLSTATE/extended code through
    /// `ErrorKind`, so this works the same on SQLite and PostgreSQL.
    pub(crate) fn unique(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |e| match &e {
            sqlx::Error::Database(db)
                if matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation) =>
            {
                StoreError::Conflict { what: what.into() }
            }
            _ => StoreError::Db(e),
        }
    }
}

/// Why a registration token could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No such token (never issued, or its org was deleted).
    #[error("unknown registration token")]
    Unknown,
    /// The token's lifetime is over.
    #[error("registration token expired")]
    Expired,
    /// The token was redeemed before: tokens are single use.
    #[error("registration token already used")]
    AlreadyUsed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RedeemError {
    fn from(e: sqlx::Error) -> Self {
        RedeemError::Store(StoreError::Db(e))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
