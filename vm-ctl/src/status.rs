//! `vm-ctl status`: vmctl's table, one guest a line, every field one word
//! so that awk can take it apart.

use nix::unistd::{Gid, Group, Uid, User};
use vm_run::control::proto::{Request, Status};

use crate::Fail;
use vm_run::control::client::{ClientError, GuestSocket};

pub const HEADER: &str = "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME";

/// `named` guests must answer; of all guests, those that cannot (gone,
/// not ours) are left out, as vmctl shows only what it may see.
pub fn print(guests: &[GuestSocket], named: bool) -> Result<(), Fail> {
    let mut rows = Vec::new();
    for g in guests {
        match g.request(Request::Status) {
            Ok((reply, _)) => match Status::from_reply(&reply) {
                Some(s) => rows.push(s),
                None => {
                    let why = "malformed status".to_string();
                    return Err(ClientError::Refused(g.name.clone(), why).into());
                }
            },
            Err(e) if named => return Err(e.into()),
            Err(_) => {}
        }
    }
    println!("{HEADER}");
    for (i, s) in rows.iter().enumerate() {
        println!("{}", row(i + 1, s));
    }
    Ok(())
}

fn row(id: usize, s: &Status) -> String {
    format!(
        "{id:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>12} {:>8} {}",
        s.pid,
        s.vcpus,
        scaled(s.maxmem),
        scaled(s.curmem),
        tty(&s.tty),
        owner(s.uid, s.gid),
        s.state.as_str(),
        s.name
    )
}

/// vmctl shows the terminal's name without /dev/.
fn tty(t: &str) -> &str {
    t.strip_prefix("/dev/").unwrap_or(t)
}

/// `user` when the group is the user's own, `user:group` otherwise.
fn owner(uid: u32, gid: u32) -> String {
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let uname = user.as_ref().map_or(uid.to_string(), |u| u.name.clone());
    if user.is_some_and(|u| u.gid.as_raw() == gid) {
        return uname;
    }
    let gname = Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or(gid.to_string(), |g| g.name);
    format!("{uname}:{gname}")
}

/// Like fmt_scaled(3): at most 4 significant characters and a unit.
pub fn scaled(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{}{}", v.round(), UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_run::control::proto::State;

    #[test]
    fn sizes_scale_like_vmctl() {
        assert_eq!(scaled(512 << 20), "512M");
        assert_eq!(scaled(1 << 30), "1G");
        assert_eq!(scaled(1536 << 20), "1.5G");
        assert_eq!(scaled(70 << 20 | 300 << 10), "70.3M");
        assert_eq!(scaled(0), "0B");
    }

    #[test]
    fn a_row_is_nine_awk_fields() {
        let s = Status {
            pid: 4242,
            vcpus: 2,
            maxmem: 512 << 20,
            curmem: 70 << 20,
            tty: "-".into(),
            uid: 0,
            gid: 0,
            state: State::Paused,
            name: "web".into(),
        };
        let r = row(1, &s);
        let f: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(
            f,
            ["1", "4242", "2", "512M", "70M", "-", "root", "paused", "web"]
        );
        assert_eq!(HEADER.split_whitespace().count(), 9);
    }
}
