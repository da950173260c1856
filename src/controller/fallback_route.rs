//! The FallbackRoute reconciler: renders the proxy's config into a ConfigMap and runs the proxy
//! as a Deployment behind a Service.

use std::sync::Arc;

use kube::runtime::controller::Action;

use super::{Context, Error, Reconciled, spec_check};
use crate::api::FallbackRoute;

impl Reconciled for FallbackRoute {
    const KIND: &'static str = "FallbackRoute";
    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        let st = obj.status.clone().unwrap_or_default();
        spec_check::record(
            &ctx,
            obj.as_ref(),
            Self::KIND,
            (st.observed_generation, &st.conditions),
            Ok(()),
        )
        .await?;
        Ok(Action::await_change())
    }
}
