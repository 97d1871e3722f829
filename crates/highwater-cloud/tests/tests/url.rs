//! Store URLs and options: parsing, the features, the environment. GCS has
//! no emulator installable from the registries this project uses, so only
//! its configuration is tested.

use highwater_cloud::{CloudOptions, CloudService, ObjectCheckpointStore, StoreUrl, is_cloud_url};
use highwater_core::{CheckpointStore, ErrorKind};

#[test]
fn urls_parse_into_service_bucket_and_prefix() {
    let cases = [
        ("s3://bucket", CloudService::S3, "bucket", ""),
        ("s3://bucket/", CloudService::S3, "bucket", ""),
        (
            "s3://my-bucket/jobs/a/",
            CloudService::S3,
            "my-bucket",
            "jobs/a",
        ),
        ("s3a://b.x/p", CloudService::S3, "b.x", "p"),
        (
            "az://container/p/q",
            CloudService::Azure,
            "container",
            "p/q",
        ),
        ("azure://container", CloudService::Azure, "container", ""),
        ("abfss://c/p", CloudService::Azure, "c", "p"),
        ("gs://bucket/prefix", CloudService::Gcs, "bucket", "prefix"),
        ("GS://bucket/prefix", CloudService::Gcs, "bucket", "prefix"),
    ];
    for (url, service, bucket, prefix) in cases {
        let parsed = StoreUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            parsed,
            StoreUrl {
                service,
                bucket: bucket.into(),
                prefix: prefix.into()
            },
            "{url}"
        );
        assert!(is_cloud_url(url), "{url}");
    }
}

#[test]
fn bad_urls_are_invalid_arguments() {
    for url in [
        "bucket/prefix",
        "http://host/bucket",
        "file:///tmp/x",
        "redis://127.0.0.1/",
        "s3://",
        "s3:///prefix",
        "s3://bucket/a//b",
        "s3://bucket/a/../b",
        "s3://bucket/p?region=x",
        "s3://bucket/p#f",
        "s3://key:secret@bucket/p",
        "gs://bu cket/p",
    ] {
        let err = StoreUrl::parse(url).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{url}: {err}");
        assert!(err.to_string().contains(url), "{url}: {err}");
        let err = ObjectCheckpointStore::from_url(url, &CloudOptions::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{url}: {err}");
    }
    for spec in ["/tmp/dir", "relative", "redis://h/", "http://x"] {
        assert!(!is_cloud_url(spec), "{spec}");
    }
}

#[test]
fn every_cloud_feature_is_built_for_the_tests() {
    for s in [CloudService::S3, CloudService::Azure, CloudService::Gcs] {
        assert!(s.is_enabled(), "{s:?}");
    }
    assert_eq!(CloudService::Gcs.name(), "gcs");
    assert_eq!(CloudService::Azure.feature(), "azure");
}

#[test]
fn gcs_stores_are_configured_from_url_and_options() {
    // A service account key file that does not exist is a configuration
    // error, reported when the store is opened.
    let err = ObjectCheckpointStore::from_url(
        "gs://my-bucket/jobs/7",
        &CloudOptions::new()
            .without_env()
            .with("google_service_account", "/nonexistent/highwater-key.json"),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("gcs"), "{err}");
    // Without credentials GCS falls back to instance metadata at request
    // time: building succeeds.
    let store = ObjectCheckpointStore::from_url(
        "gs://my-bucket/jobs/8",
        &CloudOptions::new().without_env(),
    )
    .unwrap();
    assert_eq!(store.name(), "gcs");
    assert_eq!(store.prefix().as_ref(), "jobs/8");
    assert_eq!(
        store
            .manifest_path(highwater_core::CheckpointId(3))
            .as_ref(),
        "jobs/8/manifests/00000000000000000003.hwm"
    );
}

#[test]
fn unknown_option_keys_are_refused() {
    for url in ["s3://b/p", "az://c/p", "gs://b/p"] {
        let err = ObjectCheckpointStore::from_url(
            url,
            &CloudOptions::new().without_env().with("no_such_key", "1"),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{url}: {err}");
        assert!(err.to_string().contains("no_such_key"), "{url}: {err}");
    }
}

#[test]
fn options_configure_s3_and_azure_without_the_environment() {
    let s3 = ObjectCheckpointStore::from_url(
        "s3://bucket/a/b/",
        &CloudOptions::new()
            .without_env()
            .with("aws_endpoint", "http://127.0.0.1:9")
            .with("aws_region", "eu-west-1")
            .with("aws_access_key_id", "k")
            .with("aws_secret_access_key", "s")
            .with("allow_http", "true"),
    )
    .unwrap();
    assert_eq!((s3.name(), s3.prefix().as_ref()), ("s3", "a/b"));
    let az = ObjectCheckpointStore::from_url(
        "azure://container/x",
        &CloudOptions::new()
            .without_env()
            .with("azure_storage_use_emulator", "true"),
    )
    .unwrap();
    assert_eq!((az.name(), az.prefix().as_ref()), ("azure", "x"));
    // Azure without an account or the emulator is a configuration error.
    let err =
        ObjectCheckpointStore::from_url("az://container/x", &CloudOptions::new().without_env())
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}
