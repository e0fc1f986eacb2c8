//! How the Kafka queue proves itself to brokers and protects the connection,
//! as librdkafka properties: `security.protocol`, SASL (PLAIN, SCRAM-SHA-256,
//! SCRAM-SHA-512) and TLS (a CA file, an optional client certificate, host name
//! verification). librdkafka does TLS and SCRAM with the system's OpenSSL.
//!
//! Settings that cannot work (TLS files without a TLS protocol, SASL without a
//! user) are refused by [`KafkaSecurity::properties`] before any client is made.

use rdkafka::ClientConfig;

use crate::QueueError;

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS (the password travels in the clear with PLAIN).
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMechanism {
    /// User and password sent as they are (use with TLS).
    #[default]
    Plain,
    /// Salted challenge-response, SHA-256.
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The security settings of a Kafka queue (plaintext by default).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// `security.protocol`.
    pub protocol: SecurityProtocol,
    /// `sasl.mechanism` (with a SASL protocol).
    pub sasl_mechanism: SaslMechanism,
    /// `sasl.username`.
    pub sasl_username: String,
    /// `sasl.password`.
    pub sasl_password: String,
    /// With a TLS protocol: `ca_file` (required), `cert_file` and `key_file`
    /// (mutual TLS). librdkafka verifies the broker's host name from its address;
    /// `server_name` is not supported.
    pub tls: herald_tls::ClientTls,
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("tls", &self.tls)
            .finish()
    }
}

impl KafkaSecurity {
    /// The librdkafka properties, or why these settings cannot work.
    pub fn properties(&self) -> Result<Vec<(&'static str, String)>, QueueError> {
        let invalid = |m: &str| Err(QueueError::invalid(super::ENGINE, m));
        let mut props = vec![("security.protocol", self.protocol.name().to_string())];
        let tls = &self.tls;
        if self.protocol.tls() {
            if tls.ca_file.as_os_str().is_empty() {
                return invalid("TLS needs tls.ca_file (the CA of the brokers' certificates)");
            }
            if !tls.server_name.is_empty() {
                return invalid("librdkafka verifies the broker's own host name; tls.server_name is not supported");
            }
            // Read the files now, so a wrong path is reported with its name here
            // rather than by librdkafka at the first connection.
            herald_tls::client_pem(tls)
                .map_err(|e| QueueError::invalid(super::ENGINE, "TLS").caused_by(e))?;
            props.push(("ssl.ca.location", tls.ca_file.display().to_string()));
            if !tls.cert_file.as_os_str().is_empty() {
                props.push((
                    "ssl.certificate.location",
                    tls.cert_file.display().to_string(),
                ));
                props.push(("ssl.key.location", tls.key_file.display().to_string()));
            }
            props.push(("ssl.endpoint.identification.algorithm", "https".into()));
        } else if tls.is_enabled() {
            return invalid("tls files are set but security_protocol is neither ssl nor sasl_ssl");
        }
        if self.protocol.sasl() {
            if self.sasl_username.is_empty() {
                return invalid("SASL needs sasl_username and sasl_password");
            }
            props.push(("sasl.mechanism", self.sasl_mechanism.name().to_string()));
            props.push(("sasl.username", self.sasl_username.clone()));
            props.push(("sasl.password", self.sasl_password.clone()));
        } else if !self.sasl_username.is_empty() || !self.sasl_password.is_empty() {
            return invalid(
                "sasl_username is set but security_protocol is neither sasl_plaintext nor sasl_ssl",
            );
        }
        Ok(props)
    }

    /// Sets the properties on `c` (settings already checked by
    /// [`properties`](KafkaSecurity::properties); unusable ones are left out).
    pub(crate) fn apply(&self, c: &mut ClientConfig) {
        if let Ok(props) = self.properties() {
            for (k, v) in props {
                c.set(k, v);
            }
        }
    }
}
