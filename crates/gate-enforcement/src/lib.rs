//! Enforcement of policy decisions on results: masking strategies ([`Masker`]) and the
//! per-result-shape plan that says which column gets which strategy ([`MaskPlan`]).
//!
//! The split follows the hot path: policy is evaluated once per result *shape* (a row
//! description), producing a [`MaskPlan`]; every row of that shape is then masked by
//! looking up columns in the plan and calling [`Masker::mask_into`], with no policy work and
//! no allocation beyond the caller's output buffer.

mod mask;
mod plan;

pub use mask::Masker;
pub use plan::MaskPlan;
