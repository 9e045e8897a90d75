//! Settings shared by the services. Every setting is a flag with an environment variable behind
//! it (shown in `--help`) and a default that works on a developer machine.

use std::time::Duration;

use rdkafka::ClientConfig;

/// The orders database's URL on a developer machine (`scripts/infra.sh up` creates it).
pub const ORDERS_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/orders";

/// The orders database, which order-api writes and outbox-relay reads: one database, so one
/// definition of its setting.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersDatabase {
    /// PostgreSQL URL of the orders database.
    #[arg(long, env = "DATABASE_URL", default_value = ORDERS_DATABASE_URL)]
    pub database_url: String,
    #[command(flatten)]
    pub pool: PoolSettings,
}

/// How a service connects to and prepares its PostgreSQL database.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolSettings {
    /// Largest number of connections in the pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
    /// Seconds to wait for a free pool connection before the request fails.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub db_acquire_timeout_secs: u64,
    /// Do not apply the embedded migrations at start-up (for operators who migrate separately).
    #[arg(long, env = "SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            db_max_connections: 10,
            db_acquire_timeout_secs: 5,
            skip_migrations: false,
        }
    }
}

impl PoolSettings {
    /// The acquire timeout as a [`Duration`].
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs)
    }
}

/// How a service prunes the table it keeps for a retention period (see `crate::retention`).
#[derive(Debug, Clone, clap::Args)]
pub struct PruneSettings {
    /// Seconds between two pruning rounds of the rows past their retention.
    #[arg(long, env = "PRUNE_INTERVAL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub prune_interval_secs: u64,
    /// Most rows one pruning statement deletes (one short transaction each; a round repeats
    /// it until less than this is left).
    #[arg(long, env = "PRUNE_BATCH_SIZE", default_value_t = 5_000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub prune_batch_size: i64,
}

impl Default for PruneSettings {
    fn default() -> Self {
        Self {
            prune_interval_secs: 60,
            prune_batch_size: 5_000,
        }
    }
}

impl PruneSettings {
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.prune_interval_secs)
    }
}

/// How clients reach the broker: `KAFKA_SECURITY_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (a local broker).
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS (the password crosses the network in the clear with PLAIN).
    SaslPlaintext,
    /// SASL over TLS: what managed Kafka services expect.
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `KAFKA_SASL_MECHANISM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Where the Kafka-protocol broker is and how to reach it (TLS, SASL).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap brokers (host:port).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// PLAINTEXT (a local broker), SSL, SASL_PLAINTEXT or SASL_SSL (managed Kafka).
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "PLAINTEXT",
        ignore_case = true
    )]
    pub kafka_security_protocol: SecurityProtocol,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with SASL_*.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, ignore_case = true)]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name; required with SASL_*.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// SASL password (prefer KAFKA_SASL_PASSWORD_FILE: environment variables leak into
    /// process listings and crash reports).
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        conflicts_with = "kafka_sasl_password_file"
    )]
    pub kafka_sasl_password: Option<String>,
    /// File holding the SASL password (a mounted secret); trailing newlines are ignored.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<std::path::PathBuf>,
    /// PEM file of the CA certificates that signed the brokers' certificates (SSL, SASL_SSL);
    /// unset: the system's CA store.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<std::path::PathBuf>,
    /// Any other librdkafka property, as `name=value`; repeat the flag, or separate several
    /// with `;` in the variable (e.g. `ssl.endpoint.identification.algorithm=none`). Applied
    /// last, so it overrides what the settings above set.
    #[arg(long = "kafka-property", env = "KAFKA_PROPERTIES", value_delimiter = ';', value_parser = kafka_property)]
    pub kafka_properties: Vec<(String, String)>,
}

/// `name=value` of a librdkafka property.
fn kafka_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "'{text}' is not a librdkafka property: write name=value (e.g. socket.keepalive.enable=true)"
        )),
    }
}

impl KafkaSettings {
    /// Refuses settings that cannot connect, naming the variable to change; reads the password
    /// file. Called by [`KafkaSettings::client_config`].
    pub fn validate(&self) -> anyhow::Result<()> {
        self.sasl_password().map(|_| ())
    }

    /// The SASL password, from KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, when SASL is
    /// used; an error naming what is missing.
    fn sasl_password(&self) -> anyhow::Result<Option<String>> {
        let protocol = self.kafka_security_protocol;
        if !protocol.uses_sasl() {
            return Ok(None);
        }
        if self.kafka_sasl_mechanism.is_none() {
            anyhow::bail!(
                "KAFKA_SECURITY_PROTOCOL={} needs KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                protocol.librdkafka().to_uppercase()
            );
        }
        if self.kafka_sasl_username.is_none() {
            anyhow::bail!(
                "KAFKA_SECURITY_PROTOCOL={} needs KAFKA_SASL_USERNAME",
                protocol.librdkafka().to_uppercase()
            );
        }
        match (&self.kafka_sasl_password, &self.kafka_sasl_password_file) {
            (Some(password), _) => Ok(Some(password.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| Some(text.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|error| {
                    anyhow::anyhow!(
                        "cannot read KAFKA_SASL_PASSWORD_FILE {}: {error}",
                        path.display()
                    )
                }),
            (None, None) => anyhow::bail!(
                "KAFKA_SECURITY_PROTOCOL={} needs KAFKA_SASL_PASSWORD_FILE (or KAFKA_SASL_PASSWORD)",
                protocol.librdkafka().to_uppercase()
            ),
        }
    }

    /// A client configuration with the bootstrap servers, the security settings and the
    /// reconnect behaviour every client of this system wants: a short reconnect backoff, so a
    /// broker blip of a few seconds is recovered from in a few seconds rather than the default
    /// tens.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "4")
            .set(
                "security.protocol",
                self.kafka_security_protocol.librdkafka(),
            );
        if let Some(ca) = &self.kafka_ssl_ca_location {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some(password) = self.sasl_password()? {
            let mechanism = self.kafka_sasl_mechanism.expect("checked by sasl_password");
            let username = self.kafka_sasl_username.as_deref().unwrap_or_default();
            config
                .set("sasl.mechanisms", mechanism.librdkafka())
                .set("sasl.username", username)
                .set("sasl.password", password);
        }
        for (name, value) in &self.kafka_properties {
            config.set(name, value);
        }
        Ok(config)
    }

    /// What to add to a "broker unreachable" message: the setting most likely wrong.
    pub fn connection_hint(&self) -> &'static str {
        match self.kafka_security_protocol {
            SecurityProtocol::Plaintext => {
                "connecting without TLS (KAFKA_SECURITY_PROTOCOL=PLAINTEXT): if the broker only \
                 accepts TLS, set KAFKA_SECURITY_PROTOCOL=SSL (or SASL_SSL) and \
                 KAFKA_SSL_CA_LOCATION"
            }
            SecurityProtocol::Ssl => {
                "connecting with TLS: check KAFKA_SSL_CA_LOCATION (the CA that signed the \
                 broker's certificate) and that the broker's listener is TLS"
            }
            SecurityProtocol::SaslSsl => {
                "connecting with TLS and SASL: check KAFKA_SSL_CA_LOCATION (the CA that signed \
                 the broker's certificate), KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and the \
                 password"
            }
            SecurityProtocol::SaslPlaintext => {
                "connecting with SASL without TLS: check KAFKA_SASL_MECHANISM, \
                 KAFKA_SASL_USERNAME and the password, and whether the listener needs SASL_SSL"
            }
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_security_protocol: SecurityProtocol::Plaintext,
            kafka_sasl_mechanism: None,
            kafka_sasl_username: None,
            kafka_sasl_password: None,
            kafka_sasl_password_file: None,
            kafka_ssl_ca_location: None,
            kafka_properties: Vec::new(),
        }
    }
}
