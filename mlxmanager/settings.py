"""Django settings for MLX Manager. Every deployment knob is an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from inference import logsetup
from inference.env import memory_limit_from_env as _memory_limit_from_env
from mlxmanager import config

BASE_DIR = Path(__file__).resolve().parent.parent
MLXM_DATA_DIR = config.data_dir()


def _env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _env_bool("MLXM_DEBUG")
# One line per HTTP request on the web server's console (off: the audit log has every /v1 request).
MLXM_ACCESS_LOG = _env_bool("MLXM_ACCESS_LOG")
SECRET_KEY = os.environ.get("MLXM_SECRET_KEY") or config.read_or_create_secret(MLXM_DATA_DIR / "secret_key")
MLXM_HOST = os.environ.get("MLXM_HOST", "127.0.0.1")
MLXM_PORT = int(os.environ.get("MLXM_PORT", "8000"))
# The address clients use to reach this server ("https://llm.example.com"), shown on the Connect
# page; blank: the address of the page's own request.
MLXM_PUBLIC_URL = os.environ.get("MLXM_PUBLIC_URL", "").strip().rstrip("/")
# The web server believes X-Forwarded-For / -Proto only from these peers (your reverse proxy;
# comma-separated addresses or networks, "*" for any). Anyone else's headers are ignored, so a
# client can't pick the IP its requests are audited and throttled under.
MLXM_FORWARDED_ALLOW_IPS = os.environ.get("MLXM_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("MLXM_ALLOWED_HOSTS", f"127.0.0.1,localhost,[::1],{MLXM_HOST}").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("MLXM_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # serves Swagger UI for /api/docs from /static/ninja/ (not from a CDN)
    "django_htmx",
    "template_partials",
    "mlxmanager.accounts",
    "mlxmanager.profiles",
    "mlxmanager.pool",
    "mlxmanager.playground",
    "mlxmanager.downloads",
    "mlxmanager.audit",
    "mlxmanager.credentials",
    "mlxmanager.sso",
    "mlxmanager.rules",
    "mlxmanager.workers",
    "mlxmanager.logs",
    "mlxmanager.home",
    "mlxmanager.usage",
    "mlxmanager.sitesettings",
    "inference",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "mlxmanager.security.content_security_policy",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "mlxmanager.tracing.tracing_middleware",  # left out unless tracing is on (OTEL_*)
    "mlxmanager.request_ids.request_id_middleware",
    "mlxmanager.cors.cors_middleware",
    "mlxmanager.audit.middleware.audit_middleware",
    "mlxmanager.accounts.middleware.password_change_required",  # temporary password: change it first
]
# /v1/ (API-key clients) runs through its own handler with only these (mlxmanager/gateway_asgi.py).
MLXM_GATEWAY_MIDDLEWARE = [
    "mlxmanager.tracing.tracing_middleware",  # left out unless tracing is on (OTEL_*)
    "mlxmanager.request_ids.request_id_middleware",
    "mlxmanager.cors.cors_middleware",
    "mlxmanager.audit.middleware.audit_middleware",
]
# CORS on /v1 only, for browser-based clients: comma-separated origins or "*"; empty = off.
# Prometheus: every web process writes its metrics here (prometheus_client's multiprocess mode,
# read before prometheus_client is imported); /metrics needs MLXM_METRICS_TOKEN or a peer listed
# in MLXM_METRICS_ALLOW_IPS (comma-separated; empty: the token only).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(MLXM_DATA_DIR / "prometheus"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
MLXM_METRICS_ALLOW_IPS = tuple(
    a.strip() for a in os.environ.get("MLXM_METRICS_ALLOW_IPS", "").split(",") if a.strip()
)
MLXM_CORS_ORIGINS = tuple(
    o.strip().rstrip("/") for o in os.environ.get("MLXM_CORS_ORIGINS", "").split(",") if o.strip()
)

ROOT_URLCONF = "mlxmanager.urls"
ASGI_APPLICATION = "mlxmanager.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{MLXM_DATA_DIR / 'mlxmanager.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout: concurrent writers wait instead of failing with "locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests use a file too (not Django's shared-cache in-memory database, whose table locks
    # fail at once with "database table is locked" instead of waiting like WAL does), so
    # threads in a test (download manager, audit flusher) behave as in production.
    DATABASES["default"]["TEST"] = {"NAME": str(MLXM_DATA_DIR / "test-db.sqlite3")}

# Budget counters (mlxmanager/usage/budgets.py): shared by every web process through Redis.
MLXM_BUDGET_REDIS_URL = os.environ.get("REDIS_URL", "")

if os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Argon2id first; hashes made with the others still verify and are upgraded on the next login.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]

# Every password set by the product (create_admin, the Users page, /api/users) goes through
# these with its user (validate_password(password, user)): 8+ characters (12+ for admins), not a
# common or all-digit password, not like or containing the username, 5+ different characters.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    {"NAME": "mlxmanager.accounts.validators.UsernameInPasswordValidator"},
    {"NAME": "mlxmanager.accounts.validators.DistinctCharactersValidator"},
    {"NAME": "mlxmanager.accounts.validators.AdminMinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = MLXM_DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve app static files straight from their source dirs: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True

# Request bodies over this size are refused with 413 (chat prompts, not uploads): by the ASGI
# edge (mlxmanager/request_limits.py) before or while the body is read, and by Django as well.
DATA_UPLOAD_MAX_MEMORY_SIZE = config.max_body_bytes()
# The next piece of a request body must arrive within this many seconds (408 otherwise).
MLXM_BODY_READ_TIMEOUT = config.body_read_timeout()

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# No script reads the cookie: pages carry the token in their markup (`hx-headers` on <body>,
# which static/js/playground.js reads too; the API docs' data attribute).
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Behind a TLS-terminating reverse proxy (docs/deployment): secure cookies, HSTS, HTTPS
# redirects. `manage.py check --deploy` is clean with MLXM_SECURE=1 (HSTS preload stays the
# operator's choice: MLXM_HSTS_PRELOAD=1).
# The proxy's X-Forwarded-Proto is believed by the web server, not here: uvicorn
# (--proxy-headers, mlxmanager/webserver.py) sets the request's scheme from it only when the peer
# is one of MLXM_FORWARDED_ALLOW_IPS. SECURE_PROXY_SSL_HEADER is deliberately not set: Django
# would read the header from any client, who could then pass a plain-HTTP request off as HTTPS.
MLXM_SECURE = _env_bool("MLXM_SECURE")
if MLXM_SECURE:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = int(os.environ.get("MLXM_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = _env_bool("MLXM_HSTS_PRELOAD")
    # /healthz is probed over plain HTTP by load balancers on the inside.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]  # preload is a one-way door: opt in

# /healthz answers anyone with a bare liveness status; its details (worker pid, queue, loaded
# models) go to logged-in admins and to monitors sending `Authorization: Bearer <this>` (unset:
# admins only).
MLXM_METRICS_TOKEN = os.environ.get("MLXM_METRICS_TOKEN", "")

MLXM_MODELS_DIR = MLXM_DATA_DIR / "models"
MLXM_WORKER_SOCKET = config.worker_socket(MLXM_DATA_DIR)
# Seconds the gateway waits for the worker to accept a connection before answering 503.
MLXM_WORKER_CONNECT_TIMEOUT = float(os.environ.get("MLXM_WORKER_CONNECT_TIMEOUT", "2"))
# Workers on other machines (the Workers page): the secret they share with the web processes,
# and the CA bundle that verifies the ones at tls:// addresses (blank: the system's).
MLXM_WORKER_SECRET = os.environ.get("MLXM_WORKER_SECRET", "").encode() or None
MLXM_WORKER_TLS_CA = os.environ.get("MLXM_WORKER_TLS_CA") or None

# Discover and downloads. The hub endpoint is explicit so tests can use a local fake hub.
# HF_TOKEN (optional, for gated/private models) is read from the environment until the
# credentials store keeps it encrypted; it is never logged.
MLXM_HF_ENDPOINT = os.environ.get("MLXM_HF_ENDPOINT", "https://huggingface.co").rstrip("/")
MLXM_HF_TOKEN = os.environ.get("HF_TOKEN") or None
# Pages give up on a hub that cannot be connected to after this many seconds (a search or a
# model page: MLXM_HF_TIMEOUT in all).
MLXM_HF_CONNECT_TIMEOUT = float(os.environ.get("MLXM_HF_CONNECT_TIMEOUT") or 3.0)
MLXM_HF_TIMEOUT = float(os.environ.get("MLXM_HF_TIMEOUT") or 15.0)
# Scanned for models already on disk, besides MLXM_MODELS_DIR (folders: os.pathsep-separated).
MLXM_HF_CACHE_DIR = Path(
    os.environ.get("HF_HUB_CACHE")
    or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
).expanduser()
MLXM_MODEL_DIRS = [Path(p).expanduser() for p in os.environ.get("MLXM_MODEL_DIRS", "").split(os.pathsep) if p]
# The worker's memory limit (MLXM_MEMORY_LIMIT: bytes, "12GB" or "75% of RAM"; the older
# MLXM_MEMORY_LIMIT_BYTES is an alias): models larger are flagged as not fitting.
MLXM_MEMORY_LIMIT_BYTES = _memory_limit_from_env()
MLXM_DOWNLOAD_CONCURRENCY = int(os.environ.get("MLXM_DOWNLOAD_CONCURRENCY", "2"))

# Team gateway: audit log, cloud credentials, routing rules, upstream calls (docs/architecture.md).
MLXM_AUDIT_FLUSH_INTERVAL = float(os.environ.get("MLXM_AUDIT_FLUSH_INTERVAL", "1.0"))  # 0: no flusher thread
MLXM_AUDIT_BATCH_SIZE = int(os.environ.get("MLXM_AUDIT_BATCH_SIZE", "500"))
MLXM_AUDIT_MAX_BUFFER = int(os.environ.get("MLXM_AUDIT_MAX_BUFFER", "100000"))
MLXM_AUDIT_RETENTION_DAYS = int(os.environ.get("MLXM_AUDIT_RETENTION_DAYS", "90"))  # 0: keep forever
MLXM_CREDENTIALS_KEY_FILE = Path(
    os.environ.get("MLXM_CREDENTIALS_KEY_FILE") or MLXM_DATA_DIR / "credentials.key"
)
# Settings saved on the Settings page are re-read this often by each process (0: every use).
MLXM_SETTINGS_CACHE_SECONDS = float(os.environ.get("MLXM_SETTINGS_CACHE_SECONDS", "5"))
MLXM_ROUTES_CACHE_SECONDS = float(os.environ.get("MLXM_ROUTES_CACHE_SECONDS", "5"))
# API keys found by /v1 requests are reused this long (0: look up every request); a revocation
# applies at once in the process that made it, within this TTL in other web processes.
MLXM_API_KEY_CACHE_SECONDS = float(os.environ.get("MLXM_API_KEY_CACHE_SECONDS", "10"))
# Images in chat requests (inference/media.py).
MLXM_IMAGE_MAX_BYTES = int(os.environ.get("MLXM_IMAGE_MAX_BYTES", str(20 * 1024 * 1024)))
MLXM_IMAGE_MAX_PIXELS = int(os.environ.get("MLXM_IMAGE_MAX_PIXELS", str(40_000_000)))
MLXM_MAX_IMAGES = int(os.environ.get("MLXM_MAX_IMAGES", "16"))
MLXM_IMAGE_FETCH_TIMEOUT = float(os.environ.get("MLXM_IMAGE_FETCH_TIMEOUT", "10"))
# Image URLs on loopback/private addresses are refused unless this is set (no SSRF by default).
MLXM_IMAGE_FETCH_PRIVATE = _env_bool("MLXM_IMAGE_FETCH_PRIVATE")
# Speech-to-text uploads.
MLXM_AUDIO_MAX_BYTES = int(os.environ.get("MLXM_AUDIO_MAX_BYTES", str(25 * 1024 * 1024)))
MLXM_AUDIO_MAX_SECONDS = float(os.environ.get("MLXM_AUDIO_MAX_SECONDS", "600"))
# Text-to-speech input, in characters (OpenAI's limit).
MLXM_SPEECH_MAX_CHARS = int(os.environ.get("MLXM_SPEECH_MAX_CHARS", "4096"))
# The weight of each role's turns in the worker's fair queue ("admin=2"; unnamed roles: 1).
MLXM_PRIORITY_WEIGHTS = config.priority_weights()
# The worker's queue limits, read by the worker (inference/worker/fairness.py); read here too so
# that a bad value stops the web process at start, not the worker over and over.
MLXM_QUEUE_LIMITS = config.queue_limits()
MLXM_UPSTREAM_TIMEOUT = float(os.environ.get("MLXM_UPSTREAM_TIMEOUT", "60"))
MLXM_UPSTREAM_RETRIES = int(os.environ.get("MLXM_UPSTREAM_RETRIES", "2"))
MLXM_UPSTREAM_BACKOFF = float(os.environ.get("MLXM_UPSTREAM_BACKOFF", "0.25"))
MLXM_BREAKER_FAILURES = int(os.environ.get("MLXM_BREAKER_FAILURES", "5"))
MLXM_BREAKER_COOLDOWN = float(os.environ.get("MLXM_BREAKER_COOLDOWN", "30"))

# One line format in every process (plain, or JSON lines with MLXM_LOG_FORMAT=json), with the
# request id; a web server also writes <data dir>/logs/<MLXM_LOG_PROCESS>.log (web.log, or
# web-<port>.log: `serve` names it; mlxmanager/asgi.py defaults it), rotated by size
# (MLXM_LOG_MAX_BYTES, MLXM_LOG_BACKUPS). The downloader adds downloads.log itself, the worker
# writes worker.log (inference/logsetup.py); other commands log to the console only.
MLXM_LOG_PROCESS = logsetup.process_from_env()
MLXM_LOG_DIR = logsetup.log_dir(MLXM_DATA_DIR)
LOGGING = {
    **logsetup.logging_config(
        MLXM_LOG_PROCESS, base=MLXM_DATA_DIR, request_id_filter="mlxmanager.request_ids.RequestIdFilter"
    ),
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
