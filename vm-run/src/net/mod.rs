//! The host side of a guest's network interface: the tap fd vm-net
//! handed over (tap.rs), and vmd's local-interface DHCP server (dhcp.rs).

pub mod dhcp;
pub mod tap;
