//! pcap and pcapng file source.
