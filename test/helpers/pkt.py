#!/usr/bin/python3
"""Packet probes for the virtfw kernel test harness.

Run inside a network namespace with Debian's interpreter, e.g.

    ip netns exec NS /usr/bin/python3 -I pkt.py SUBCOMMAND 'JSON-ARGS'

Subcommands (all arguments are one JSON object):

  serve  {"tcp": [ports], "udp": [ports]}
         TCP and UDP echo servers on every port, IPv4 (0.0.0.0) and IPv6 (::).
         Prints "READY" on stdout once every socket is bound and listening,
         then runs until SIGTERM/SIGINT.  UDP replies leave from the address
         the datagram was sent to (IP_PKTINFO / IPV6_PKTINFO).

  tcp    {"ip", "port", "src"?, "timeout"?}
         Connect, send a token, wait for the echo.  Exit 0 on success, 1 on
         any failure (refused, timeout, reset, wrong echo).

  udp    {"ip", "port", "src"?, "sport"?, "timeout"?}
         Send a token from a socket connected to ip:port and wait for the
         echo.  Exit 0 on success, 1 otherwise.

  send   {"iface"?, "kind", ...}  craft frames with scapy and sendp() them
         (see build_frame for the fields).  Exit 0 once sent.

  sniff  {"iface", "filter"?}
         Scapy AsyncSniffer; prints "READY" once the socket is open, counts
         matching frames until stdin closes or SIGTERM/SIGINT arrives, then
         prints the count on stdout.  (The TypeScript harness uses tcpdump
         for captures because it starts faster; this exists for debugging.)

Scapy is imported only by `send` and `sniff`; the socket probes stay fast.
"""

import errno
import json
import os
import selectors
import signal
import socket
import struct
import sys

TOKEN = b"virtfw-probe"

# Not exported by Python 3.11's socket module.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def log(msg):
    sys.stderr.write("pkt.py: %s\n" % msg)
    sys.stderr.flush()


def family_of(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def resolve(ip, port, socktype):
    fam = family_of(ip)
    infos = socket.getaddrinfo(ip, port, fam, socktype, 0, socket.AI_NUMERICHOST)
    return fam, infos[0][4]


# ---------------------------------------------------------------- serve


class Stop(Exception):
    pass


def _raise_stop(_sig, _frame):
    raise Stop()


def serve(args):
    tcp_ports = [int(p) for p in args.get("tcp", [])]
    udp_ports = [int(p) for p in args.get("udp", [])]
    sel = selectors.DefaultSelector()
    sockets = []

    def mk(fam, stype, port):
        s = socket.socket(fam, stype)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            addr = ("::", port, 0, 0)
        else:
            addr = ("0.0.0.0", port)
        if stype == socket.SOCK_DGRAM:
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind(addr)
        if stype == socket.SOCK_STREAM:
            s.listen(128)
        s.setblocking(False)
        sockets.append(s)
        return s

    families = [socket.AF_INET]
    if socket.has_ipv6 and os.path.exists("/proc/sys/net/ipv6"):
        families.append(socket.AF_INET6)
    for port in tcp_ports:
        for fam in families:
            sel.register(mk(fam, socket.SOCK_STREAM, port), selectors.EVENT_READ, ("accept", fam))
    for port in udp_ports:
        for fam in families:
            sel.register(mk(fam, socket.SOCK_DGRAM, port), selectors.EVENT_READ, ("udp", fam))

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    sys.stdout.write("READY %d\n" % os.getpid())
    sys.stdout.flush()

    try:
        while True:
            for key, _ in sel.select():
                kind, fam = key.data
                s = key.fileobj
                try:
                    if kind == "accept":
                        conn, _ = s.accept()
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ, ("conn", fam))
                    elif kind == "conn":
                        data = s.recv(65536)
                        if not data:
                            sel.unregister(s)
                            s.close()
                        else:
                            s.setblocking(True)
                            s.settimeout(1.0)
                            s.sendall(data)
                            s.setblocking(False)
                    else:
                        udp_echo(s, fam)
                except (OSError, socket.timeout) as e:
                    if kind == "conn":
                        try:
                            sel.unregister(s)
                        except (KeyError, ValueError):
                            pass
                        s.close()
                    elif e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                        log("serve: %s" % e)
    except Stop:
        pass
    finally:
        for s in sockets:
            s.close()


def udp_echo(s, fam):
    data, anc, _flags, peer = s.recvmsg(65536, socket.CMSG_SPACE(64))
    reply_anc = []
    for level, ctype, cdata in anc:
        if fam == socket.AF_INET and level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            spec_dst = cdata[4:8]
            reply_anc.append((socket.IPPROTO_IP, IP_PKTINFO, struct.pack("i4s4s", 0, spec_dst, b"\0" * 4)))
        elif fam == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO:
            # struct in6_pktinfo { in6_addr addr; unsigned ifindex; }
            addr = cdata[0:16]
            ifindex = struct.unpack("I", cdata[16:20])[0]
            if addr[0] == 0xFF:  # multicast destination: let the kernel choose
                addr = b"\0" * 16
            reply_anc.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr + struct.pack("I", ifindex)))
    try:
        s.sendmsg([data], reply_anc, 0, peer)
    except OSError as e:
        if reply_anc:
            log("udp reply with pktinfo failed (%s), retrying without" % e)
            s.sendto(data, peer)
        else:
            raise


# ---------------------------------------------------------------- clients


def bind_source(s, fam, src, sport):
    if src is None and not sport:
        return
    if fam == socket.AF_INET6:
        host = src or "::"
        _, addr = resolve(host, sport or 0, socket.SOCK_DGRAM)
        s.bind(addr)
    else:
        s.bind((src or "0.0.0.0", sport or 0))


def tcp_client(args):
    timeout = float(args.get("timeout", 1.0))
    fam, addr = resolve(args["ip"], int(args["port"]), socket.SOCK_STREAM)
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        bind_source(s, fam, args.get("src"), args.get("sport"))
        s.connect(addr)
        s.sendall(TOKEN)
        got = b""
        while len(got) < len(TOKEN):
            chunk = s.recv(len(TOKEN) - len(got))
            if not chunk:
                break
            got += chunk
        if got != TOKEN:
            log("tcp: bad echo %r" % got)
            return 1
        return 0
    except (OSError, socket.timeout) as e:
        log("tcp: %s" % (e or "timeout"))
        return 1
    finally:
        s.close()


def udp_client(args):
    timeout = float(args.get("timeout", 1.0))
    fam, addr = resolve(args["ip"], int(args["port"]), socket.SOCK_DGRAM)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bind_source(s, fam, args.get("src"), args.get("sport"))
        # Connected: only a reply from exactly ip:port is accepted.
        s.connect(addr)
        token = TOKEN + os.urandom(4).hex().encode()
        s.send(token)
        while True:
            data = s.recv(65536)
            if data == token:
                return 0
    except (OSError, socket.timeout) as e:
        log("udp: %s" % (e or "timeout"))
        return 1
    finally:
        s.close()


# ---------------------------------------------------------------- scapy


def mac_to_ll(mac):
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    eui = b[0:3] + [0xFF, 0xFE] + b[3:6]
    groups = ["%x" % (eui[i] << 8 | eui[i + 1]) for i in range(0, 8, 2)]
    return "fe80::" + ":".join(groups)


def v6_multicast_mac(ip):
    packed = socket.inet_pton(socket.AF_INET6, ip)
    return "33:33:" + ":".join("%02x" % b for b in packed[12:16])


def build_frame(a):
    """Fields (all optional except kind):
    kind: udp | tcp-syn | icmp-echo | arp-reply | arp-request | icmpv6-ra | raw-ethertype
    srcMac, dstMac, srcIp, dstIp, sport, dport, payload (str), ttl
    arpHwsrc, arpPsrc, arpHwdst, arpPdst        (ARP kinds)
    ethertype                                    (raw-ethertype; int)
    raPrefix ("2001:db8:1::/64"), raRouterLifetime  (icmpv6-ra)
    vlan (802.1Q id wrapping the frame)
    """
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        ICMPv6ND_RA,
        ICMPv6NDOptPrefixInfo,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
    )
    from scapy.packet import Raw

    kind = a["kind"]
    src_mac = a.get("srcMac")
    dst_mac = a.get("dstMac")
    src_ip = a.get("srcIp")
    dst_ip = a.get("dstIp")
    payload = a.get("payload")

    def ip_layer():
        if not dst_ip:
            raise SystemExit("pkt.py send: dstIp is required for kind %s" % kind)
        if ":" in dst_ip:
            return IPv6(src=src_ip, dst=dst_ip, hlim=int(a.get("ttl", 64)))
        return IP(src=src_ip, dst=dst_ip, ttl=int(a.get("ttl", 64)))

    if kind == "udp":
        inner = ip_layer() / UDP(sport=int(a.get("sport", 12345)), dport=int(a.get("dport", 7)))
        inner = inner / Raw((payload or "virtfw").encode())
    elif kind == "tcp-syn":
        inner = ip_layer() / TCP(sport=int(a.get("sport", 12345)), dport=int(a.get("dport", 80)), flags="S", seq=1000)
    elif kind == "icmp-echo":
        l3 = ip_layer()
        if ":" in dst_ip:
            inner = l3 / ICMPv6EchoRequest(id=0x7666, seq=1, data=(payload or "virtfw").encode())
        else:
            inner = l3 / ICMP(type=8, id=0x7666, seq=1) / Raw((payload or "virtfw").encode())
    elif kind in ("arp-reply", "arp-request"):
        op = 2 if kind == "arp-reply" else 1
        hwsrc = a.get("arpHwsrc") or src_mac
        hwdst = a.get("arpHwdst") or ("00:00:00:00:00:00" if op == 1 else (dst_mac or "ff:ff:ff:ff:ff:ff"))
        inner = ARP(op=op, hwsrc=hwsrc, psrc=a.get("arpPsrc") or src_ip,
                    hwdst=hwdst, pdst=a.get("arpPdst") or dst_ip)
        dst_mac = dst_mac or "ff:ff:ff:ff:ff:ff"
    elif kind == "icmpv6-ra":
        dst_ip = dst_ip or "ff02::1"
        src_ip = src_ip or mac_to_ll(src_mac)
        inner = IPv6(src=src_ip, dst=dst_ip, hlim=255) / ICMPv6ND_RA(
            routerlifetime=int(a.get("raRouterLifetime", 1800)))
        inner = inner / ICMPv6NDOptSrcLLAddr(lladdr=src_mac)
        if a.get("raPrefix"):
            pfx, plen = a["raPrefix"].split("/")
            inner = inner / ICMPv6NDOptPrefixInfo(prefix=pfx, prefixlen=int(plen), L=1, A=1,
                                                  validlifetime=86400, preferredlifetime=14400)
    elif kind == "raw-ethertype":
        inner = Raw((payload or "virtfw-raw-frame-padding-padding-padding").encode())
    else:
        raise SystemExit("pkt.py send: unknown kind %r" % kind)

    if not dst_mac:
        if dst_ip and ":" in dst_ip and dst_ip.lower().startswith("ff"):
            dst_mac = v6_multicast_mac(dst_ip)
        else:
            dst_mac = "ff:ff:ff:ff:ff:ff"

    eth = Ether(src=src_mac, dst=dst_mac)
    if a.get("vlan") is not None:
        eth = eth / Dot1Q(vlan=int(a["vlan"]))
    if kind == "raw-ethertype":
        etype = int(a.get("ethertype", 0x88B5))
        if a.get("vlan") is not None:
            eth[Dot1Q].type = etype
        else:
            eth.type = etype
    return eth / inner


def send(args):
    from scapy.config import conf
    from scapy.sendrecv import sendp

    conf.verb = 0
    frame = build_frame(args)
    sendp(frame, iface=args.get("iface", "eth0"), count=int(args.get("count", 1)), verbose=0)
    sys.stdout.write("SENT %d\n" % int(args.get("count", 1)))
    return 0


def sniff(args):
    import threading

    from scapy.config import conf
    from scapy.sendrecv import AsyncSniffer

    conf.verb = 0
    count = [0]

    def on_pkt(_p):
        count[0] += 1

    started = threading.Event()
    sniffer = AsyncSniffer(iface=args["iface"], filter=args.get("filter") or None, prn=on_pkt,
                           store=False, started_callback=started.set)
    sniffer.start()
    if not started.wait(10):
        log("sniff: sniffer did not start")
        return 1
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    sys.stdout.write("READY %d\n" % os.getpid())
    sys.stdout.flush()
    while not done.wait(0.1):
        pass
    sniffer.stop()
    sys.stdout.write("COUNT %d\n" % count[0])
    sys.stdout.flush()
    return 0


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: pkt.py serve|tcp|udp|send|sniff JSON\n")
        return 2
    cmd = argv[1]
    args = json.loads(argv[2]) if len(argv) > 2 else {}
    if cmd == "serve":
        serve(args)
        return 0
    if cmd == "tcp":
        return tcp_client(args)
    if cmd == "udp":
        return udp_client(args)
    if cmd == "send":
        return send(args)
    if cmd == "sniff":
        return sniff(args)
    sys.stderr.write("pkt.py: unknown subcommand %r\n" % cmd)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
