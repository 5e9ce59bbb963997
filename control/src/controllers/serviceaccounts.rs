//! The ServiceAccount controller: every namespace that is not being deleted
//! has a `default` ServiceAccount, as Kubernetes gives it; deleting it
//! brings it back.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::{Context, Error};

/// The account every namespace has.
pub const DEFAULT_ACCOUNT: &str = "default";

pub async fn run(client: kube::Client) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let accounts = Api::<ServiceAccount>::all(client.clone());
    let context = Context::new(client, "serviceaccount-controller");
    Controller::new(namespaces, watcher::Config::default())
        // A deleted default account wakes its namespace.
        .watches(
            accounts,
            watcher::Config::default(),
            |account: ServiceAccount| {
                account
                    .namespace()
                    .filter(|_| account.name_any() == DEFAULT_ACCOUNT)
                    .map(|namespace| ObjectRef::<Namespace>::new(&namespace))
            },
        )
        .run(reconcile, super::retry_later, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "serviceaccount reconcile failed");
            }
        })
        .await;
}

#[tracing::instrument(skip_all, fields(namespace = namespace.name_any()))]
async fn reconcile(namespace: Arc<Namespace>, context: Arc<Context>) -> Result<Action, Error> {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(context.client.clone(), &name);
    if api.get_opt(DEFAULT_ACCOUNT).await?.is_some() {
        return Ok(Action::await_change());
    }
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_ACCOUNT.into()),
            namespace: Some(name),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(Action::await_change()),
        // Created meanwhile, or the namespace began terminating.
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 403 => {
            Ok(Action::await_change())
        }
        Err(error) => Err(error.into()),
    }
}
