//! What every Kafka producer of this system shares: the idempotent configuration and the one
//! rule that tells a failure about a message from a failure about the broker.

use rdkafka::{types::RDKafkaErrorCode, ClientConfig};

use crate::settings::KafkaSettings;

/// A producer configuration that never reorders or duplicates within a partition on retries:
/// `enable.idempotence=true`, `acks=all`, over the shared client settings.
pub fn idempotent_producer_config(kafka: &KafkaSettings) -> anyhow::Result<ClientConfig> {
    let mut config = kafka.client_config()?;
    config.set("enable.idempotence", "true").set("acks", "all");
    Ok(config)
}

/// Whether a produce failure is about the message or about the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// About this message (too large, invalid, its topic refused or unknown): sending the same
    /// bytes again fails again.
    Permanent,
    /// About the broker or the connection (timeouts, transport, brokers down, queue full, a
    /// fatal producer state): the same message may succeed later.
    Transient,
}

/// The one place that decides whether an rdkafka error code is about one message or about the
/// broker.
///
/// Unknown topic or partition is permanent: it is about the message's topic, and treating it as
/// an outage would stall every other topic. Anything not listed is transient, so an error this
/// list does not know pauses and retries rather than giving a message up.
pub fn classify(code: RDKafkaErrorCode) -> FailureKind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::MessageBatchTooLarge
        | C::BadMessage
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation
        | C::TopicAuthorizationFailed
        | C::InvalidTopic
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::KeySerialization
        | C::ValueSerialization => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

/// [`classify`] for any rdkafka error: one without an error code is transient.
pub fn classify_error(error: &rdkafka::error::KafkaError) -> FailureKind {
    error
        .rdkafka_error_code()
        .map_or(FailureKind::Transient, classify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_validity_errors_are_about_the_message_and_outages_are_not() {
        use RDKafkaErrorCode::*;
        for code in [
            MessageSizeTooLarge,
            InvalidMessage,
            InvalidRecord,
            TopicAuthorizationFailed,
            UnknownTopicOrPartition,
        ] {
            assert_eq!(classify(code), FailureKind::Permanent, "{code:?}");
        }
        for code in [
            MessageTimedOut,
            AllBrokersDown,
            BrokerTransportFailure,
            RequestTimedOut,
            NotEnoughReplicas,
            LeaderNotAvailable,
            QueueFull,
            Fatal,
            PurgeQueue,
        ] {
            assert_eq!(classify(code), FailureKind::Transient, "{code:?}");
        }
    }
}
