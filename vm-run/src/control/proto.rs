//! The control protocol, version 1: what vm-ctl and vm-run say to each
//! other on a guest's control socket. docs/CONTROL.md is its spec; this
//! module is its only implementation, used by both sides.
//!
//! A message is a frame: the magic `vmc`, the version byte, a 32-bit
//! big-endian length, then that many bytes of UTF-8 text: words separated
//! by single spaces. A request is one verb; a reply is `ok` followed by
//! `key=value` words, or `error` followed by a message.

use std::fmt;
use std::io::{self, Read, Write};

pub const VERSION: u8 = 1;
const MAGIC: &[u8; 3] = b"vmc";
const HEADER: usize = 8;
/// Far more than any message needs; a larger length is garbage.
pub const MAX_LEN: u32 = 4096;

#[derive(Debug)]
pub enum ProtoError {
    Io(io::Error),
    /// The peer closed the connection before a whole frame came.
    Eof,
    BadMagic,
    Version(u8),
    TooLong(u32),
    NotText,
    UnknownVerb(String),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ProtoError::Io(e) => write!(f, "{e}"),
            ProtoError::Eof => f.write_str("connection closed"),
            ProtoError::BadMagic => f.write_str("not a vm-run control message"),
            ProtoError::Version(v) => write!(
                f,
                "control protocol version {v}, this side speaks {VERSION}"
            ),
            ProtoError::TooLong(n) => write!(f, "message of {n} bytes (at most {MAX_LEN})"),
            ProtoError::NotText => f.write_str("message is not UTF-8 text"),
            ProtoError::UnknownVerb(v) => write!(f, "unknown request {v:?}"),
        }
    }
}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Eof
        } else {
            ProtoError::Io(e)
        }
    }
}

pub fn write_frame(w: &mut impl Write, text: &str) -> io::Result<()> {
    let len = u32::try_from(text.len())
        .ok()
        .filter(|n| *n <= MAX_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "control message too long"))?;
    let mut frame = Vec::with_capacity(HEADER + text.len());
    frame.extend_from_slice(MAGIC);
    frame.push(VERSION);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(text.as_bytes());
    w.write_all(&frame)
}

pub fn read_frame(r: &mut impl Read) -> Result<String, ProtoError> {
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h)?;
    if &h[..3] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    if h[3] != VERSION {
        return Err(ProtoError::Version(h[3]));
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_LEN {
        return Err(ProtoError::TooLong(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    String::from_utf8(body).map_err(|_| ProtoError::NotText)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// One `ok` line describing the guest (see `Status`).
    Status,
    /// Press the ACPI power button; the guest decides what to do.
    Stop,
    /// End the guest at once, as vmctl stop -f does.
    Kill,
    Pause,
    Unpause,
    /// After `ok`, the connection carries the serial console both ways.
    Console,
    /// No reply until vm-run exits; then `ok status=N`, its exit status.
    Wait,
    /// After `ok`, the client passes an fd (SCM_RIGHTS, with one byte);
    /// vm-run pauses the guest, writes the snapshot stream to the fd,
    /// replies, and ends (`send`) or goes on (`checkpoint`).
    Send,
    Checkpoint,
    /// As `send`, but live: the guest runs while its memory is copied, and
    /// pauses only for what it wrote meanwhile and its devices.
    Migrate,
}

const VERBS: [(Request, &str); 10] = [
    (Request::Status, "status"),
    (Request::Stop, "stop"),
    (Request::Kill, "kill"),
    (Request::Pause, "pause"),
    (Request::Unpause, "unpause"),
    (Request::Console, "console"),
    (Request::Wait, "wait"),
    (Request::Send, "send"),
    (Request::Checkpoint, "checkpoint"),
    (Request::Migrate, "migrate"),
];

impl Request {
    pub fn verb(self) -> &'static str {
        VERBS
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("", |(_, v)| v)
    }

    pub fn parse(text: &str) -> Result<Request, ProtoError> {
        VERBS
            .iter()
            .find(|(_, v)| *v == text)
            .map(|(r, _)| *r)
            .ok_or_else(|| ProtoError::UnknownVerb(text.chars().take(32).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(Vec<(String, String)>),
    Error(String),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Ok(Vec::new())
    }

    pub fn error(msg: impl fmt::Display) -> Reply {
        // One line, whatever the message: the frame is text, not a log.
        Reply::Error(msg.to_string().replace('\n', " "))
    }

    pub fn encode(&self) -> String {
        match self {
            Reply::Ok(fields) => fields.iter().fold("ok".to_string(), |mut s, (k, v)| {
                s.push(' ');
                s.push_str(k);
                s.push('=');
                s.push_str(v);
                s
            }),
            Reply::Error(msg) => format!("error {msg}"),
        }
    }

    pub fn decode(text: &str) -> Result<Reply, ProtoError> {
        let (head, rest) = text.split_once(' ').unwrap_or((text, ""));
        match head {
            "ok" => Ok(Reply::Ok(
                rest.split(' ')
                    .filter(|w| !w.is_empty())
                    .map(|w| {
                        let (k, v) = w.split_once('=').unwrap_or((w, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
            )),
            "error" => Ok(Reply::Error(rest.to_string())),
            _ => Err(ProtoError::NotText),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        match self {
            Reply::Ok(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str()),
            Reply::Error(_) => None,
        }
    }
}

/// What `status` reports, one field a column of vm-ctl status. Values
/// never contain spaces: names and tty paths cannot, numbers do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub vcpus: u8,
    /// Guest memory size, bytes.
    pub maxmem: u64,
    /// Guest memory resident on the host, bytes.
    pub curmem: u64,
    /// The console's terminal, or "-".
    pub tty: String,
    pub uid: u32,
    pub gid: u32,
    pub state: State,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
        }
    }
}

impl Status {
    pub fn reply(&self) -> Reply {
        let f = |k: &str, v: String| (k.to_string(), v);
        Reply::Ok(vec![
            f("pid", self.pid.to_string()),
            f("vcpus", self.vcpus.to_string()),
            f("maxmem", self.maxmem.to_string()),
            f("curmem", self.curmem.to_string()),
            f("tty", self.tty.clone()),
            f("uid", self.uid.to_string()),
            f("gid", self.gid.to_string()),
            f("state", self.state.as_str().to_string()),
            f("name", self.name.clone()),
        ])
    }

    pub fn from_reply(r: &Reply) -> Option<Status> {
        let num = |k| r.get(k)?.parse::<u64>().ok();
        Some(Status {
            pid: r.get("pid")?.parse().ok()?,
            vcpus: r.get("vcpus")?.parse().ok()?,
            maxmem: num("maxmem")?,
            curmem: num("curmem")?,
            tty: r.get("tty")?.to_string(),
            uid: r.get("uid")?.parse().ok()?,
            gid: r.get("gid")?.parse().ok()?,
            state: match r.get("state")? {
                "paused" => State::Paused,
                _ => State::Running,
            },
            name: r.get("name")?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, "status").unwrap();
        assert_eq!(&buf[..8], b"vmc\x01\0\0\0\x06");
        assert_eq!(read_frame(&mut buf.as_slice()).unwrap(), "status");
    }

    #[test]
    fn garbage_is_refused_without_reading_on() {
        let bad = |b: &[u8]| read_frame(&mut &b[..]).unwrap_err();
        assert!(matches!(bad(b"GET / HTTP/1.0\r\n"), ProtoError::BadMagic));
        assert!(matches!(bad(b"vmc\x02\0\0\0\0"), ProtoError::Version(2)));
        assert!(matches!(
            bad(b"vmc\x01\xff\xff\xff\xff"),
            ProtoError::TooLong(u32::MAX)
        ));
        assert!(matches!(bad(b"vmc\x01\0\0\0\x09stat"), ProtoError::Eof));
        assert!(matches!(bad(b"vm"), ProtoError::Eof));
        assert!(matches!(
            bad(b"vmc\x01\0\0\0\x02\xff\xfe"),
            ProtoError::NotText
        ));
        assert!(Request::parse("reboot").is_err());
        assert!(write_frame(&mut Vec::new(), &"x".repeat(5000)).is_err());
    }

    #[test]
    fn status_round_trips() {
        let s = Status {
            pid: 42,
            vcpus: 2,
            maxmem: 512 << 20,
            curmem: 12 << 20,
            tty: "/dev/pts/3".into(),
            uid: 1000,
            gid: 100,
            state: State::Paused,
            name: "web".into(),
        };
        let text = s.reply().encode();
        assert!(text.starts_with("ok pid=42 vcpus=2 "), "{text}");
        let back = Reply::decode(&text).unwrap();
        assert_eq!(Status::from_reply(&back), Some(s));
        assert_eq!(
            Reply::decode("error no such thing").unwrap(),
            Reply::Error("no such thing".into())
        );
        for r in VERBS.map(|(r, _)| r) {
            assert_eq!(Request::parse(r.verb()).unwrap(), r);
        }
    }
}

/// What the fuzz target `control` runs: the bytes as a connection's
/// stream, read frame by frame as vm-run reads requests, each frame's
/// text parsed as a request and as a reply (vm-ctl's side), until the
/// stream ends or is refused.
#[cfg(any(test, fuzzing))]
pub mod fuzz {
    use super::*;

    pub fn frames(data: &[u8]) {
        let mut r = data;
        while let Ok(text) = read_frame(&mut r) {
            let _ = Request::parse(&text);
            if let Ok(reply) = Reply::decode(&text) {
                let _ = Status::from_reply(&reply);
                // What vm-ctl decodes, vm-run can say again.
                assert_eq!(Reply::decode(&reply.encode()).ok(), Some(reply));
            }
        }
    }

    /// The seeds of vm-run/fuzz/corpus/control: each request, and the
    /// replies vm-ctl reads.
    pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let frame = |texts: &[&str]| {
            let mut b = Vec::new();
            for t in texts {
                let _ = write_frame(&mut b, t);
            }
            b
        };
        let status = Status {
            pid: 4242,
            vcpus: 2,
            maxmem: 1 << 30,
            curmem: 123 << 20,
            tty: "/dev/pts/3".into(),
            uid: 0,
            gid: 0,
            state: State::Running,
            name: "web".into(),
        };
        let mut seeds: Vec<_> = VERBS.iter().map(|(_, v)| (*v, frame(&[v]))).collect();
        seeds.push(("status_reply", frame(&[&status.reply().encode()])));
        seeds.push(("error_reply", frame(&["error no such guest"])));
        seeds.push(("wait_reply", frame(&["ok status=75"])));
        seeds.push(("two_requests", frame(&["pause", "unpause"])));
        seeds
    }

    #[cfg(test)]
    mod tests {
        use crate::virtio::fuzz::support;

        #[test]
        fn random_streams_do_not_crash_the_control_protocol() {
            for data in support::inputs(0x2545_f491_4f6c_dd1d, 500, 256, &super::seeds()) {
                super::frames(&data);
            }
        }

        #[test]
        fn control_corpus_is_current() {
            support::corpus_is_current("control", &super::seeds());
        }

        #[test]
        #[ignore]
        fn write_seeds() {
            support::write_corpus("control", &super::seeds());
        }
    }
}
