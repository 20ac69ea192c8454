//! Shared application state: the validated config turned into ready-to-use
//! routes (adapters built once, one pooled HTTP client), the stream
//! supervisor, and the meter. Cheap to clone; handed to every handler.

use std::collections::HashMap;
use std::sync::Arc;

use tokun_actors::provider::ProviderHandle;
use tokun_actors::{Route, StreamSupervisorHandle, Tariff};
use tokun_providers::echo::{EchoAdapter, EchoConfig};
use tokun_providers::openai::OpenAiAdapter;
use tokun_providers::{Adapter, ProviderError};
use tokun_providers::{AnthropicAdapter, GeminiAdapter};

use crate::api::ws::Tickets;
use crate::auth::KeyCache;
use crate::config::{Config, ModelConfig, ProviderKind};
use crate::inflight::{Idempotency, InFlight};
use crate::services::Services;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    models: HashMap<String, Model>,
    streams: StreamSupervisorHandle,
    services: Services,
    keys: KeyCache,
    inflight: InFlight,
    idempotency: Idempotency,
    /// Single-use WebSocket tickets for browsers (`POST /v1/ws/ticket`).
    tickets: Tickets,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// One provider actor per configured provider: limits and health.
    limiters: HashMap<String, ProviderHandle>,
    /// The Stripe client when `[stripe]` is configured (top-ups and webhooks).
    stripe: Option<crate::stripe::Stripe>,
    /// The web console's mailer and sign-in rate limits.
    console: crate::console::Console,
    /// Set once at shutdown; every open `/v1/ws` socket watches it, so its
    /// receiver count is the number of sockets still open.
    going_away: Arc<tokio::sync::watch::Sender<bool>>,
    /// `[access_log]`: `None` when disabled.
    access_log: Option<crate::access_log::AccessLog>,
}

/// A configured model with its routes resolved to adapters.
pub struct Model {
    pub config: ModelConfig,
    pub routes: Arc<[Route]>,
}

impl Model {
    /// What the model costs and how much it can read, for its holds.
    pub fn tariff(&self) -> Tariff {
        Tariff {
            price: self.config.price,
            context_window: u64::from(self.config.context_window),
        }
    }
}

impl AppState {
    pub fn new(
        config: Config,
        streams: StreamSupervisorHandle,
        services: Services,
        limiters: HashMap<String, ProviderHandle>,
        access_log: Option<crate::access_log::AccessLog>,
    ) -> Result<Self, ProviderError> {
        let adapters = build_adapters(&config)?;
        let mut models = HashMap::with_capacity(config.models.len());
        for model in &config.models {
            let routes: Vec<Route> = model
                .routes
                .iter()
                .enumerate()
                .filter_map(|(position, r)| {
                    let (adapter, timeouts) = adapters.get(r.provider.as_str())?;
                    Some(Route {
                        provider: r.provider.as_str().into(),
                        upstream_model: r.model.as_str().into(),
                        position: u32::try_from(position).unwrap_or(u32::MAX),
                        adapter: adapter.clone(),
                        timeouts: *timeouts,
                        limiter: limiters.get(r.provider.as_str()).cloned(),
                    })
                })
                .collect();
            models.insert(
                model.id.clone(),
                Model {
                    config: model.clone(),
                    routes: routes.into(),
                },
            );
        }
        let tickets = Tickets::new(config.websocket.ticket_ttl);
        let metrics = config
            .metrics
            .enabled
            .then(crate::metrics::install)
            .flatten();
        let stripe = config.stripe.clone().and_then(|stripe| {
            // The config checked the key and URL, so this does not fail.
            crate::stripe::Stripe::new(stripe)
                .inspect_err(
                    |error| tracing::error!(%error, "Stripe is misconfigured; top-ups are off"),
                )
                .ok()
        });
        let idempotency = Idempotency::new(services.store.clone());
        let going_away = Arc::new(tokio::sync::watch::Sender::new(false));
        let console = crate::console::Console::new(&config);
        let inner = Inner {
            console,
            stripe,
            config,
            models,
            streams,
            services,
            keys: KeyCache::default(),
            inflight: InFlight::default(),
            idempotency,
            going_away,
            tickets,
            metrics,
            limiters,
            access_log,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn model(&self, id: &str) -> Option<&Model> {
        self.inner.models.get(id)
    }

    pub fn streams(&self) -> &StreamSupervisorHandle {
        &self.inner.streams
    }

    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    pub fn keys(&self) -> &KeyCache {
        &self.inner.keys
    }

    pub fn inflight(&self) -> &InFlight {
        &self.inner.inflight
    }

    /// Watched by each `/v1/ws` socket: true once the server shuts down.
    pub fn going_away(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.going_away.subscribe()
    }

    /// Tells every socket the server is shutting down; see [`Self::going_away`].
    pub fn going_away_signal(&self) -> Arc<tokio::sync::watch::Sender<bool>> {
        self.inner.going_away.clone()
    }

    pub fn idempotency(&self) -> &Idempotency {
        &self.inner.idempotency
    }

    pub fn stripe(&self) -> Option<&crate::stripe::Stripe> {
        self.inner.stripe.as_ref()
    }

    pub fn console(&self) -> &crate::console::Console {
        &self.inner.console
    }

    pub fn tickets(&self) -> &Tickets {
        &self.inner.tickets
    }

    pub fn metrics(&self) -> Option<&metrics_exporter_prometheus::PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    /// The provider actor of a configured provider.
    pub fn limiter(&self, provider: &str) -> Option<&ProviderHandle> {
        self.inner.limiters.get(provider)
    }

    /// The access log, when `[access_log] enabled`.
    pub fn access_log(&self) -> Option<&crate::access_log::AccessLog> {
        self.inner.access_log.as_ref()
    }

    pub fn billing_enabled(&self) -> bool {
        self.inner.config.billing.enabled
    }
}

type Adapters<'a> = HashMap<&'a str, (Adapter, tokun_actors::Timeouts)>;

fn build_adapters(config: &Config) -> Result<Adapters<'_>, ProviderError> {
    // One pooled HTTP client for every networked route.
    let mut client: Option<tokun_providers::http::Client> = None;
    let mut shared_client =
        |connect_timeout| -> Result<tokun_providers::http::Client, ProviderError> {
            if let Some(shared) = &client {
                return Ok(shared.clone());
            }
            let built = tokun_providers::http::http_client(connect_timeout)?;
            client = Some(built.clone());
            Ok(built)
        };
    let mut adapters = HashMap::with_capacity(config.providers.len());
    for provider in &config.providers {
        let key = provider.api_key.as_ref().map(|k| k.expose().to_owned());
        let url = provider.base_url.as_str();
        let adapter = match provider.kind {
            ProviderKind::Echo => Adapter::Echo(EchoAdapter::new(EchoConfig {
                delay: provider.echo_delay,
                reply_tokens: provider.echo_reply_tokens,
            })),
            ProviderKind::OpenAi => Adapter::OpenAi(OpenAiAdapter::new(
                url,
                key,
                shared_client(provider.connect_timeout)?,
            )),
            ProviderKind::Anthropic => Adapter::Anthropic(AnthropicAdapter::new(
                url,
                key,
                shared_client(provider.connect_timeout)?,
            )),
            ProviderKind::Gemini => Adapter::Gemini(GeminiAdapter::new(
                url,
                key,
                shared_client(provider.connect_timeout)?,
            )),
        };
        adapters.insert(provider.name.as_str(), (adapter, provider.timeouts));
    }
    Ok(adapters)
}
