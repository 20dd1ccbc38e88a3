//! Getting a report mail out: a `sendmail -oi -t` pipe (the local MTA queues, signs and delivers
//! it), SMTP submission with lettre, or nothing at all (dry run: files in a folder).

use crate::config::{Config, Method, Tls};
use crate::message::ReportMail;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where a report goes.
pub trait Sender {
    /// Hands `mail` (addressed in its To header to `to`) over for delivery; `Ok` only once the
    /// MTA has taken responsibility for it.
    fn send(&mut self, mail: &ReportMail, from: &str, to: &[String]) -> Result<(), String>;
}

/// The sender `cfg` asks for.
pub fn from_config(cfg: &Config) -> Result<Box<dyn Sender>, String> {
    Ok(match cfg.method {
        Method::Sendmail => Box::new(Sendmail {
            program: cfg.sendmail.clone(),
        }),
        Method::DryRun => Box::new(DryRun {
            dir: cfg
                .dry_run_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".")),
            written: Vec::new(),
        }),
        Method::Smtp => Box::new(Smtp::new(cfg)?),
    })
}

pub struct Sendmail {
    pub program: PathBuf,
}

impl Sender for Sendmail {
    fn send(&mut self, mail: &ReportMail, from: &str, _to: &[String]) -> Result<(), String> {
        let mut child = Command::new(&self.program)
            .args(["-oi", "-t", "-f", from])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: cannot run: {e}", self.program.display()))?;
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(&mail.message));
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{}: {e}", self.program.display()))?;
        if let Some(Err(e)) = written {
            return Err(format!(
                "{}: writing the message: {e}",
                self.program.display()
            ));
        }
        if !out.status.success() {
            return Err(format!(
                "{} exited with {}: {}",
                self.program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if let Some(Err(e)) = written {
            return Err(format!(
                "{}: writing the message: {e}",
                self.program.display()
            ));
        }
        Ok(())
    }
}

/// Dry run: `FILENAME` (the .xml.gz attachment) and `FILENAME.eml` (the whole message).
pub struct DryRun {
    pub dir: PathBuf,
    pub written: Vec<PathBuf>,
}

impl Sender for DryRun {
    fn send(&mut self, mail: &ReportMail, _from: &str, _to: &[String]) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let gz = self.dir.join(&mail.filename);
        let eml = self.dir.join(format!("{}.eml", mail.filename));
        if !mail.gzip.is_empty() {
            std::fs::write(&gz, &mail.gzip).map_err(|e| format!("{}: {e}", gz.display()))?;
        }
        std::fs::write(&eml, &mail.message).map_err(|e| format!("{}: {e}", eml.display()))?;
        self.written.push(gz);
        Ok(())
    }
}

/// SMTP submission (STARTTLS, implicit TLS or, for a loopback relay, none; AUTH when a user
/// name is configured).
pub struct Smtp {
    transport: lettre::SmtpTransport,
}

impl Smtp {
    pub fn new(cfg: &Config) -> Result<Smtp, String> {
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Tls as LTls, TlsParameters};
        let s = &cfg.smtp;
        let tls = || TlsParameters::new(s.host.clone()).map_err(|e| format!("smtp.host: {e}"));
        let tls = match s.tls {
            Tls::Starttls => LTls::Required(tls()?),
            Tls::Implicit => LTls::Wrapper(tls()?),
            Tls::None => LTls::None,
        };
        let mut b = lettre::SmtpTransport::builder_dangerous(&s.host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(s.timeout.max(1))));
        if let Some(user) = &s.username {
            let file = s
                .password_file
                .as_ref()
                .ok_or("smtp.username needs smtp.password_file")?;
            let pass =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let pass = pass.lines().next().unwrap_or_default().to_string();
            b = b.credentials(Credentials::new(user.clone(), pass));
        }
        Ok(Smtp {
            transport: b.build(),
        })
    }
}

impl Sender for Smtp {
    fn send(&mut self, mail: &ReportMail, from: &str, to: &[String]) -> Result<(), String> {
        use lettre::Transport;
        let parse = |a: &str| {
            a.parse::<lettre::Address>()
                .map_err(|e| format!("'{a}': {e}"))
        };
        let rcpts = to.iter().map(|a| parse(a)).collect::<Result<Vec<_>, _>>()?;
        let env =
            lettre::address::Envelope::new(Some(parse(from)?), rcpts).map_err(|e| e.to_string())?;
        self.transport
            .send_raw(&env, &mail.message)
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}
