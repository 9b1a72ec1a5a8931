//! The few rtnetlink requests the classic tc attachment needs, by interface index in the
//! caller's network namespace: add and delete the clsact qdisc, add a direct-action bpf filter
//! under a name of our choosing, list a hook's filters with their program, delete one filter.
//!
//! Why not aya's helpers: aya 0.14 attaches and detaches filters by priority and handle only. It
//! cannot list filters with their program id, cannot name a filter apart from its program, cannot
//! delete a qdisc, and its links, when dropped, delete whatever filter sits at the recorded
//! priority and handle by then. Messages are built and parsed with netlink-packet-route.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `RTM_NEWTFILTER`: the type of each filter in a dump and of the echo of an added filter.
const RTM_NEWTFILTER: u16 = 44;
/// Size of `struct nlmsghdr`: a tc message's `struct tcmsg` follows it.
const NLMSG_HDRLEN: usize = 16;
/// Protocol of our filters, in network byte order in `tcm_info` (`ETH_P_ALL`: every frame).
const ETH_P_ALL: u16 = 0x0003;
/// A dump that changed under us (`NLM_F_DUMP_INTR`) is retried this many times.
const DUMP_TRIES: usize = 3;

/// Where on the clsact qdisc a filter sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ingress" => Some(Self::Ingress),
            "egress" => Some(Self::Egress),
            _ => None,
        }
    }

    /// `tcm_parent` of the hook's filters: `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS|EGRESS)`.
    fn parent(self) -> TcHandle {
        TcHandle {
            major: u16::MAX,
            minor: match self {
                Self::Ingress => TcHandle::MIN_INGRESS,
                Self::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// One filter on a hook, as a dump shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// `bpf`, `u32`, ...; empty when the message could not be decoded.
    pub kind: String,
    /// For `bpf` filters: the filter's name (`TCA_BPF_NAME`).
    pub name: Option<String>,
    /// For eBPF `bpf` filters: the program's id (`TCA_BPF_ID`), unique while it exists.
    pub prog_id: Option<u32>,
    /// For eBPF `bpf` filters: the program's tag (`TCA_BPF_TAG`), a hash of its instructions.
    pub prog_tag: Option<u64>,
}

/// An rtnetlink socket in the caller's network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Adds a clsact qdisc to `ifindex`: `Ok(true)` when this call created it, `Ok(false)` when
    /// one was already there (`EEXIST`: clsact is exclusive).
    pub fn add_clsact(&mut self, ifindex: u32) -> io::Result<bool> {
        let msg = TcMessage::from_parts(
            clsact_header(ifindex),
            vec![TcAttribute::Kind("clsact".into())],
        );
        match self.request(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the clsact qdisc of `ifindex`, and with it every filter on it. The kind is part
    /// of the request, so an `ingress` qdisc in the same place is refused (`EINVAL`).
    pub fn delete_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let msg = TcMessage::from_parts(
            clsact_header(ifindex),
            vec![TcAttribute::Kind("clsact".into())],
        );
        self.request(RouteNetlinkMessage::DelQueueDiscipline(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Adds a direct-action bpf filter running `prog` under `name`, at a priority and handle the
    /// kernel picks; returns the filter as the kernel echoes it.
    pub fn add_bpf_filter(
        &mut self,
        ifindex: u32,
        hook: Hook,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> io::Result<Filter> {
        let fd = u32::try_from(prog.as_raw_fd()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let msg = TcMessage::from_parts(
            filter_header(ifindex, hook, 0, 0),
            vec![
                TcAttribute::Kind("bpf".into()),
                TcAttribute::Options(vec![
                    TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
                    TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
                ]),
            ],
        );
        // NLM_F_EXCL: never replace a filter that is already there.
        let echoed = self.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_ACK | NLM_F_ECHO | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        match echoed.as_slice() {
            [filter] => Ok(filter.clone()),
            _ => Err(io::Error::other(format!(
                "expected the added filter echoed once, got {} replies",
                echoed.len()
            ))),
        }
    }

    /// Every filter on `hook` of `ifindex`, whatever its protocol, priority or chain (an
    /// interface without clsact has none).
    pub fn filters(&mut self, ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
        for _ in 0..DUMP_TRIES {
            let mut header = filter_header(ifindex, hook, 0, 0);
            // A dump skips filters of another protocol or priority than the ones in tcm_info
            // when those are set: 0 asks for all of them.
            header.info = 0;
            let msg = TcMessage::from_parts(header, vec![]);
            match self.request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) {
                // A dump lists each priority once with handle 0 before its filters.
                Ok(list) => return Ok(list.into_iter().filter(|f| f.handle != 0).collect()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the filter list kept changing while it was read",
        ))
    }

    /// Deletes the one filter at `priority`/`handle` on `hook`. Handle 0 would delete every
    /// filter at that priority, so it is refused here.
    pub fn delete_filter(
        &mut self,
        ifindex: u32,
        hook: Hook,
        priority: u16,
        handle: u32,
    ) -> io::Result<()> {
        if handle == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "filter handle 0 names a whole priority",
            ));
        }
        // Protocol 0 in tcm_info matches the filter whatever its protocol.
        let mut header = filter_header(ifindex, hook, priority, handle);
        header.info = u32::from(priority) << 16;
        let msg = TcMessage::from_parts(header, vec![]);
        self.request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Sends `payload` and reads the answer: for a dump until `NLMSG_DONE`, otherwise until the
    /// acknowledgement. Returns the filters among the replies (a dump's, or an echo).
    fn request(&mut self, payload: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<Filter>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut filters = Vec::new();
        let mut interrupted = false;
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let nl = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?;
                let len = nl.length() as usize;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::other("bad netlink reply length"));
                }
                let one = &rest[..len];
                // Each message starts 4-byte aligned in the datagram.
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
                if nl.sequence_number() != seq {
                    continue; // a late answer to an earlier request
                }
                interrupted |= nl.flags() & NLM_F_DUMP_INTR != 0;
                match nl.message_type() {
                    NLMSG_DONE => return finish(filters, interrupted),
                    NLMSG_ERROR => {
                        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one)
                            .map_err(|e| io::Error::other(format!("bad netlink error: {e}")))?;
                        if let NetlinkPayload::Error(e) = parsed.payload
                            && e.code.is_some()
                        {
                            return Err(e.to_io());
                        }
                        // An acknowledgement: the end of a request that is not a dump.
                        if !dump {
                            return Ok(filters);
                        }
                    }
                    RTM_NEWTFILTER => filters.push(decode_filter(one)),
                    _ => {}
                }
            }
        }
    }
}

fn finish(filters: Vec<Filter>, interrupted: bool) -> io::Result<Vec<Filter>> {
    if interrupted {
        Err(io::ErrorKind::Interrupted.into())
    } else {
        Ok(filters)
    }
}

fn clsact_header(ifindex: u32) -> TcHeader {
    TcHeader {
        index: ifindex as i32,
        // TC_H_MAKE(TC_H_CLSACT, 0) under parent TC_H_CLSACT, as `tc qdisc add ... clsact`.
        handle: TcHandle {
            major: u16::MAX,
            minor: 0,
        },
        parent: TcHandle::CLSACT,
        ..TcHeader::default()
    }
}

fn filter_header(ifindex: u32, hook: Hook, priority: u16, handle: u32) -> TcHeader {
    TcHeader {
        index: ifindex as i32,
        handle: handle.into(),
        parent: hook.parent(),
        // TC_H_MAKE(priority << 16, htons(ETH_P_ALL)); priority 0 lets the kernel choose.
        info: (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be()),
        ..TcHeader::default()
    }
}

/// A filter from an `RTM_NEWTFILTER` message. A message netlink-packet-route cannot decode (a
/// kind or attribute it does not know) still yields the priority and handle from the fixed
/// header: such a filter is somebody else's, and it must still count as present.
fn decode_filter(message: &[u8]) -> Filter {
    let mut filter = Filter::default();
    if let Some(header) = message
        .get(NLMSG_HDRLEN..)
        .and_then(|b| TcHeader::parse(b).ok())
    {
        filter.priority = (header.info >> 16) as u16;
        filter.handle = header.handle.into();
    }
    let Ok(parsed) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message) else {
        return filter;
    };
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(tc)) = parsed.payload
    else {
        return filter;
    };
    for attribute in tc.attributes {
        match attribute {
            TcAttribute::Kind(kind) => filter.kind = kind,
            TcAttribute::Options(options) => {
                for option in options {
                    match option {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => {
                            filter.name = Some(name)
                        }
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = Some(id),
                        TcOption::Bpf(TcFilterBpfOption::ProgTag(tag)) => {
                            filter.prog_tag = Some(u64::from_be_bytes(tag))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    filter
}
