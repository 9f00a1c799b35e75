"""Settings from the environment: defaults, the signing key file, and refusals at start."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.storage.config import S3Settings, Settings, load_settings
from services.storage.errors import SettingsError


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "var" / "url-signing-key"


def test_defaults(key_file: Path) -> None:
    settings = load_settings({"STORAGE_URL_SIGNING_KEY_FILE": str(key_file)})
    assert settings == Settings(url_signing_key=settings.url_signing_key, url_signing_key_file=key_file)
    assert (settings.listen, settings.backend, settings.local_dir) == ("127.0.0.1:50052", "local", Path("var/objects"))
    assert (settings.public_url, settings.url_ttl_seconds) == ("http://127.0.0.1:8080", 300)


def test_a_missing_key_file_is_created_private_and_reused(key_file: Path) -> None:
    first = load_settings({"STORAGE_URL_SIGNING_KEY_FILE": str(key_file)})
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first.url_signing_key) == 64
    second = load_settings({"STORAGE_URL_SIGNING_KEY_FILE": str(key_file)})
    assert second.url_signing_key == first.url_signing_key
    assert [p.name for p in key_file.parent.iterdir()] == ["url-signing-key"]


def test_the_key_from_the_environment_wins_and_is_not_printed(key_file: Path) -> None:
    settings = load_settings({"STORAGE_URL_SIGNING_KEY": "k" * 40, "STORAGE_URL_SIGNING_KEY_FILE": str(key_file)})
    assert settings.url_signing_key == b"k" * 40
    assert not key_file.exists()
    assert "kkkk" not in repr(settings)


def test_values_from_the_environment(key_file: Path) -> None:
    settings = load_settings(
        {
            "STORAGE_LISTEN": "0.0.0.0:6000",
            "STORAGE_BACKEND": "local",
            "STORAGE_LOCAL_DIR": "/srv/objects",
            "STORAGE_PUBLIC_URL": "https://api.example.com/",
            "STORAGE_URL_SIGNING_KEY_FILE": str(key_file),
            "STORAGE_URL_TTL_SECONDS": "60",
        }
    )
    assert settings.listen == "0.0.0.0:6000"
    assert settings.local_dir == Path("/srv/objects")
    assert settings.public_url == "https://api.example.com"
    assert settings.url_ttl_seconds == 60


S3_ENV = {
    "STORAGE_BACKEND": "s3",
    "STORAGE_S3_ENDPOINT": "minio:9000",
    "STORAGE_S3_ACCESS_KEY": "access",
    "STORAGE_S3_SECRET_KEY": "secret-value",
}


def test_s3_settings_with_defaults_and_overrides(key_file: Path) -> None:
    settings = load_settings({"STORAGE_URL_SIGNING_KEY_FILE": str(key_file), **S3_ENV})
    assert settings.backend == "s3"
    assert settings.s3 == S3Settings(endpoint="minio:9000", access_key="access", secret_key="secret-value")
    assert "secret-value" not in repr(settings)
    settings = load_settings({
        "STORAGE_URL_SIGNING_KEY_FILE": str(key_file), **S3_ENV,
        "STORAGE_S3_BUCKET": "media.example", "STORAGE_S3_SECURE": "true", "STORAGE_S3_REGION": "eu-west-1",
        "STORAGE_S3_PUBLIC_ENDPOINT": "files.example.com", "STORAGE_S3_PART_SIZE_MIB": "16",
        "STORAGE_S3_PARALLEL_PARTS": "4",
    })
    assert settings.s3 == S3Settings(
        endpoint="minio:9000", access_key="access", secret_key="secret-value", bucket="media.example", secure=True,
        region="eu-west-1", public_endpoint="files.example.com", part_size_bytes=16 * 1024 * 1024, parallel_parts=4,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STORAGE_BACKEND": "s3"},
         "STORAGE_BACKEND=s3 needs STORAGE_S3_ENDPOINT, STORAGE_S3_ACCESS_KEY, STORAGE_S3_SECRET_KEY"),
        ({**S3_ENV, "STORAGE_S3_BUCKET": "Bad_Bucket"}, "STORAGE_S3_BUCKET='Bad_Bucket' is not a valid bucket name"),
        ({**S3_ENV, "STORAGE_S3_ENDPOINT": "http://minio:9000"}, "STORAGE_S3_ENDPOINT='http://minio:9000' must be"),
        ({**S3_ENV, "STORAGE_S3_SECURE": "maybe"}, "STORAGE_S3_SECURE='maybe' must be true or false"),
        ({**S3_ENV, "STORAGE_S3_PART_SIZE_MIB": "4"}, "STORAGE_S3_PART_SIZE_MIB='4' must be a whole number in 5..512"),
        ({"STORAGE_BACKEND": "gcs"}, "STORAGE_BACKEND='gcs' is unknown; supported: local, s3"),
        ({"STORAGE_LISTEN": "50052"}, "STORAGE_LISTEN='50052' must be host:port"),
        ({"STORAGE_PUBLIC_URL": "gateway:8080"}, "STORAGE_PUBLIC_URL='gateway:8080' must be an http"),
        ({"STORAGE_URL_TTL_SECONDS": "0"}, "STORAGE_URL_TTL_SECONDS='0' must be"),
        ({"STORAGE_URL_TTL_SECONDS": "999999999"}, "STORAGE_URL_TTL_SECONDS='999999999' must be"),
        ({"STORAGE_URL_TTL_SECONDS": "5m"}, "STORAGE_URL_TTL_SECONDS='5m' must be"),
        ({"STORAGE_URL_SIGNING_KEY": "short"}, "STORAGE_URL_SIGNING_KEY must be at least 32 characters"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(key_file: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"STORAGE_URL_SIGNING_KEY_FILE": str(key_file), **env})
    assert message in caught.value.message


def test_a_damaged_key_file_is_refused(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True)
    key_file.write_text("")
    with pytest.raises(SettingsError, match="delete it"):
        load_settings({"STORAGE_URL_SIGNING_KEY_FILE": str(key_file)})
