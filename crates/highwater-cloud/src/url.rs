//! Stores named by a URL: `s3://bucket/prefix`, `az://container/prefix`
//! (or `azure://…`) and `gs://bucket/prefix`, configured from the
//! environment the way `object_store`'s builders read it, plus options.

use std::sync::Arc;
use std::time::Duration;

use highwater_core::{Error, Result};
use object_store::path::Path;

use crate::store::ObjectCheckpointStore;

/// The cloud services a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloudService {
    /// Amazon S3 or an S3-compatible server (`s3://`, `s3a://`); feature `s3`.
    S3,
    /// Azure Blob Storage or azurite (`az://`, `azure://`, `abfs://`,
    /// `abfss://`, `adl://`); feature `azure`.
    Azure,
    /// Google Cloud Storage (`gs://`); feature `gcs`.
    Gcs,
}

impl CloudService {
    /// The store name used in errors and metrics: `s3`, `azure`, `gcs`.
    pub fn name(self) -> &'static str {
        match self {
            CloudService::S3 => "s3",
            CloudService::Azure => "azure",
            CloudService::Gcs => "gcs",
        }
    }

    /// The Cargo feature of this crate that builds the service's client.
    pub fn feature(self) -> &'static str {
        match self {
            CloudService::S3 => "s3",
            CloudService::Azure => "azure",
            CloudService::Gcs => "gcs",
        }
    }

    /// True when this build includes the service's client.
    pub fn is_enabled(self) -> bool {
        match self {
            CloudService::S3 => cfg!(feature = "s3"),
            CloudService::Azure => cfg!(feature = "azure"),
            CloudService::Gcs => cfg!(feature = "gcs"),
        }
    }

    /// Keys a listing page returns at most: S3 and GCS 1 000, Azure 5 000.
    fn list_page(self) -> usize {
        match self {
            CloudService::Azure => 5000,
            CloudService::S3 | CloudService::Gcs => 1000,
        }
    }
}

/// A parsed store URL: the service, the bucket (or container) and the
/// prefix under which the store keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The service.
    pub service: CloudService,
    /// The bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    /// The prefix inside the bucket, `/`-separated, without leading or
    /// trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

/// True when `spec` starts like a URL [`StoreUrl::parse`] accepts.
pub fn is_cloud_url(spec: &str) -> bool {
    spec.split_once("://")
        .is_some_and(|(scheme, _)| service_of(scheme).is_some())
}

fn service_of(scheme: &str) -> Option<CloudService> {
    match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => Some(CloudService::S3),
        "az" | "azure" | "abfs" | "abfss" | "adl" => Some(CloudService::Azure),
        "gs" => Some(CloudService::Gcs),
        _ => None,
    }
}

impl StoreUrl {
    /// The bucket's URL in the service's canonical scheme (`s3://bucket`,
    /// `az://container`, `gs://bucket`), which error messages put before
    /// an object's path.
    pub fn root(&self) -> String {
        let scheme = match self.service {
            CloudService::S3 => "s3",
            CloudService::Azure => "az",
            CloudService::Gcs => "gs",
        };
        format!("{scheme}://{}", self.bucket)
    }

    /// Parses `scheme://bucket[/prefix][/]`.
    ///
    /// Refuses (with [`Error::InvalidArgument`]) other schemes, an empty
    /// bucket, query strings and fragments, credentials in the URL, and
    /// prefixes `object_store` cannot name (`.` or `..` segments, empty
    /// segments such as `a//b`, control characters).
    pub fn parse(url: &str) -> Result<StoreUrl> {
        let bad = |why: &str| Err(Error::InvalidArgument(format!("store url {url:?}: {why}")));
        let Some((scheme, rest)) = url.split_once("://") else {
            return bad("expected s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or gs://BUCKET/PREFIX");
        };
        let Some(service) = service_of(scheme) else {
            return bad("unsupported scheme; expected s3://, az://, azure:// or gs://");
        };
        if rest.contains(['?', '#']) {
            return bad("query strings and fragments are not supported; pass options instead");
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return bad("the bucket (or container) name is empty");
        }
        if bucket.contains('@') {
            return bad(
                "credentials or account names in the url are not supported; use the environment or options",
            );
        }
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad("the bucket (or container) name has characters buckets cannot have");
        }
        let prefix = prefix.trim_end_matches('/');
        if let (false, Err(e)) = (prefix.is_empty(), Path::parse(prefix)) {
            return bad(&format!("invalid prefix {prefix:?}: {e}"));
        }
        Ok(StoreUrl {
            service,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

/// How a cloud store is configured besides its URL.
///
/// By default the service's usual environment variables are read, exactly
/// as `object_store`'s `from_env` builders read them:
///
/// - S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
///   `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT` (any
///   S3-compatible server), `AWS_ALLOW_HTTP`,
///   `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, and every other `AWS_*` key
///   `object_store` knows;
/// - Azure: `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
///   `AZURE_STORAGE_SAS_KEY`, `AZURE_STORAGE_CLIENT_ID`/`…_SECRET`/
///   `AZURE_STORAGE_TENANT_ID`, `AZURE_STORAGE_USE_EMULATOR=true` for
///   azurite (endpoint from `AZURITE_BLOB_STORAGE_URL`, default
///   `http://127.0.0.1:10000`, with the emulator's well-known account);
/// - GCS: `GOOGLE_SERVICE_ACCOUNT` (a key file path),
///   `GOOGLE_SERVICE_ACCOUNT_KEY` (the key itself),
///   `GOOGLE_APPLICATION_CREDENTIALS`.
///
/// [`with`](Self::with) adds `object_store` configuration keys (the same
/// names in lowercase, such as `aws_endpoint`, `allow_http`, `timeout`),
/// which win over the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudOptions {
    from_env: bool,
    options: Vec<(String, String)>,
    http_retries: usize,
    http_retry_timeout: Duration,
}

impl Default for CloudOptions {
    /// Read the environment, no extra options, and the HTTP retries of
    /// [`with_http_retries`](Self::with_http_retries)`(6, 60 s)`.
    fn default() -> Self {
        CloudOptions {
            from_env: true,
            options: Vec::new(),
            http_retries: 6,
            http_retry_timeout: Duration::from_secs(60),
        }
    }
}

impl CloudOptions {
    /// The defaults: see [`CloudOptions::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Ignores the environment: only the URL and the options configure the
    /// client.
    pub fn without_env(mut self) -> Self {
        self.from_env = false;
        self
    }

    /// Adds an `object_store` configuration key (for example
    /// `aws_endpoint`, `aws_access_key_id`, `allow_http`,
    /// `azure_storage_use_emulator`, `google_service_account`, `timeout`).
    /// A key the service does not know is refused when the store is built.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// How often the HTTP client retries one request after a connection
    /// error, a 5xx answer, a 429 or a timeout of a safe request, and for
    /// how long at most (`object_store`'s `RetryConfig`, exponential
    /// backoff from 100 ms). The store's own [`RetryPolicy`](crate::RetryPolicy)
    /// retries on top of this, so a request is given up only after both.
    pub fn with_http_retries(mut self, max_retries: usize, timeout: Duration) -> Self {
        self.http_retries = max_retries;
        self.http_retry_timeout = timeout;
        self
    }

    /// The options added with [`with`](Self::with), in order.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    #[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
    fn retry_config(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: self.http_retries,
            retry_timeout: self.http_retry_timeout,
        }
    }
}

impl ObjectCheckpointStore {
    /// A store in the bucket and under the prefix named by `url`:
    /// `s3://bucket/prefix`, `az://container/prefix` (also `azure://`),
    /// `gs://bucket/prefix`. The client is configured from the environment
    /// and `options` (see [`CloudOptions`]); the store is named `s3`,
    /// `azure` or `gcs` and uses the default [`StoreConfig`](crate::StoreConfig)
    /// (multipart above 8 MiB).
    ///
    /// Nothing is sent: a wrong endpoint or missing credentials show as
    /// [`Error::Store`] on the first request. The bucket or container must
    /// exist.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a URL [`StoreUrl::parse`] refuses, a
    /// service whose feature this build lacks, an unknown option key, or a
    /// configuration the client refuses (for example no region).
    pub fn from_url(url: &str, options: &CloudOptions) -> Result<Self> {
        let parsed = StoreUrl::parse(url)?;
        let service = parsed.service;
        if !service.is_enabled() {
            return Err(Error::InvalidArgument(format!(
                "store url {url:?} needs the `{}` feature of highwater-cloud (or of the highwater facade)",
                service.feature()
            )));
        }
        let store = build(&parsed, options).map_err(|e| {
            Error::InvalidArgument(format!(
                "configure the {} store for {url:?}: {e}",
                service.name()
            ))
        })?;
        Ok(
            ObjectCheckpointStore::new(store, &parsed.prefix, service.name())
                .with_service_rules(
                    service.list_page(),
                    service == CloudService::S3,
                    service != CloudService::Azure,
                )
                .with_root(parsed.root()),
        )
    }
}

/// A configuration key and value `object_store` refused.
#[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
fn unknown_key(key: &str, e: object_store::Error) -> String {
    format!("option {key:?}: {e}")
}

/// Builds the service's client.
#[allow(unused_variables)] // Without cloud features every arm returns early.
fn build(
    url: &StoreUrl,
    options: &CloudOptions,
) -> std::result::Result<Arc<dyn object_store::ObjectStore>, String> {
    match url.service {
        #[cfg(feature = "s3")]
        CloudService::S3 => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut b = if options.from_env {
                AmazonS3Builder::from_env()
            } else {
                AmazonS3Builder::new()
            };
            for (k, v) in &options.options {
                let key: AmazonS3ConfigKey = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|e| unknown_key(k, e))?;
                b = b.with_config(key, v);
            }
            let store = b
                .with_bucket_name(&url.bucket)
                .with_retry(options.retry_config())
                .build()
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "azure")]
        CloudService::Azure => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut b = if options.from_env {
                MicrosoftAzureBuilder::from_env()
            } else {
                MicrosoftAzureBuilder::new()
            };
            for (k, v) in &options.options {
                let key: AzureConfigKey = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|e| unknown_key(k, e))?;
                b = b.with_config(key, v);
            }
            let store = b
                .with_container_name(&url.bucket)
                .with_retry(options.retry_config())
                .build()
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "gcs")]
        CloudService::Gcs => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut b = if options.from_env {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            };
            for (k, v) in &options.options {
                let key: GoogleConfigKey = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|e| unknown_key(k, e))?;
                b = b.with_config(key, v);
            }
            let store = b
                .with_bucket_name(&url.bucket)
                .with_retry(options.retry_config())
                .build()
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        #[allow(unreachable_patterns)] // Reached only without some features.
        other => Err(format!("the `{}` feature is not enabled", other.feature())),
    }
}
