//! The one error type of the service layer, and its two renderings: an HTTP status with a
//! JSON body, and a gRPC status. Keeping the mapping in one place is what makes both surfaces
//! refuse the same requests the same way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a service call did not succeed. Messages are meant for the caller: they never carry
/// secrets, SQL or internal details (those are logged instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// The store (or another dependency) is not reachable; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
}

impl ServiceError {
    /// The stable code in HTTP error bodies (`{"error": {"code", "message"}}`).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::InvalidArgument(_) => "invalid_argument",
            ServiceError::PermissionDenied(_) => "permission_denied",
            ServiceError::Unauthenticated(_) => "unauthenticated",
            ServiceError::Unavailable(_) => "unavailable",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ServiceError::NotFound(m)
            | ServiceError::Conflict(m)
            | ServiceError::InvalidArgument(m)
            | ServiceError::PermissionDenied(m)
            | ServiceError::Unauthenticated(m)
            | ServiceError::Unavailable(m) => m,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ServiceError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ServiceError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ServiceError::NotFound(_) => tonic::Code::NotFound,
            ServiceError::Conflict(_) => tonic::Code::AlreadyExists,
            ServiceError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ServiceError::PermissionDenied(_) => tonic::Code::PermissionDenied,
            ServiceError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServiceError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }

    pub fn not_found(what: &str) -> Self {
        ServiceError::NotFound(format!("{what} not found"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument(message.into())
    }

    pub fn denied(message: impl Into<String>) -> Self {
        ServiceError::PermissionDenied(message.into())
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ServiceError::Unauthenticated(message.into())
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        tonic::Status::new(e.grpc_code(), e.message().to_string())
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"code": self.code(), "message": self.message()}
        });
        (self.http_status(), axum::Json(body)).into_response()
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
