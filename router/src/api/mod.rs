//! HTTP handlers of the public API, one module per resource, and the shared state.

pub mod chat;
pub mod conversations;
pub mod models;
pub mod responses;

use std::sync::Arc;

use crate::config::RouterConfig;
use crate::error::ApiError;
use crate::generator::Generator;
use crate::store::ResponseStore;

/// State shared by every handler.
pub struct AppState {
    pub generator: Arc<dyn Generator>,
    pub store: Arc<dyn ResponseStore>,
    pub config: RouterConfig,
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// Model names the API accepts: the configured name, then the generator's.
    pub fn model_names(&self) -> Vec<String> {
        let mut names = vec![self.config.model_name.clone()];
        for m in self.generator.models() {
            if !names.contains(&m) {
                names.push(m);
            }
        }
        names
    }

    /// The model to report: the requested one when it is served, the
    /// configured one when none is given; unknown names are a 404.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None | Some("") => Ok(self.config.model_name.clone()),
            Some(m) if self.model_names().iter().any(|n| n == m) => Ok(m.to_owned()),
            Some(m) => Err(ApiError::NotFound {
                message: format!("The model '{m}' does not exist or you do not have access to it."),
                param: Some("model".into()),
                code: Some("model_not_found".into()),
            }),
        }
    }
}
