//! -u user[:group]: what is left of root's power goes before the exec.

use std::io;

use nix::unistd::{setgroups, setresgid, setresuid, Gid, Group, Uid, User};

pub struct Target {
    pub uid: Uid,
    pub gid: Gid,
}

#[derive(Debug)]
pub enum UserError {
    NoUser(String),
    NoGroup(String),
    Os(&'static str, io::Error),
}

/// `user[:group]`, by name or number; the group defaults to the user's.
pub fn resolve(spec: &str) -> Result<Target, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let found = match user.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)).ok().flatten(),
        Err(_) => User::from_name(user).ok().flatten(),
    };
    let (uid, primary) = match (found, user.parse::<u32>()) {
        (Some(u), _) => (u.uid, Some(u.gid)),
        // A bare number need not be in the password file.
        (None, Ok(n)) => (Uid::from_raw(n), None),
        (None, Err(_)) => return Err(UserError::NoUser(user.into())),
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .ok()
                    .flatten()
                    .ok_or_else(|| UserError::NoGroup(g.into()))?
                    .gid
            }
        },
        None => primary.ok_or_else(|| UserError::NoGroup(format!("(the group of uid {uid})")))?,
    };
    Ok(Target { uid, gid })
}

/// Becomes `t` for good: no supplementary groups, real, effective and
/// saved IDs all changed, and no capability left, not even in the
/// bounding set.
pub fn drop_to(t: &Target) -> Result<(), UserError> {
    let os = |what| move |e: nix::Error| UserError::Os(what, e.into());
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments only. Caps this kernel
        // does not know fail with EINVAL, which is fine.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    setgroups(&[]).map_err(os("setgroups"))?;
    setresgid(t.gid, t.gid, t.gid).map_err(os("setresgid"))?;
    setresuid(t.uid, t.uid, t.uid).map_err(os("setresuid"))?;
    // Changing from root to another uid clears the permitted, effective
    // and ambient sets; make sure nothing can go back.
    if !t.uid.is_root() && setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        return Err(UserError::Os(
            "setresuid",
            io::Error::other("could regain root after dropping it"),
        ));
    }
    Ok(())
}
