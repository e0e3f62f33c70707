"""``fedge-broker``: write a secure site (TLS, per-device passwords, ACL, signing key); run it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from broker.config import find_mosquitto
from broker.site import (
    Site,
    add_devices,
    init_site,
    load_site,
    reload_broker,
    revoke_devices,
    save_site,
)
from fedge.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, setup_logging
from fedge.errors import FedgeError

log = logging.getLogger("fedge.broker")

EXAMPLE = """examples:
  fedge-broker init site --federation lab --devices 3 --host gateway.local --bind 0.0.0.0
  fedge-broker run site                       # Mosquitto in the foreground
  scp -r site/devices/device-001 pi@kitchen:/etc/fedge/    # provisioning = one folder
  fedge-broker add-device site pi-garage      # new folder site/devices/pi-garage
  fedge-broker revoke-device site device-002  # refused from now on (running broker reloads)

exit codes: 0 done, 1 Mosquitto failed to start, 2 bad arguments or site"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedge-broker",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A secure fedge site: Mosquitto with TLS, per-device credentials and ACLs.",
    )
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write a new site into DIR")
    init.add_argument("dir")
    init.add_argument("--federation", required=True)
    who = init.add_mutually_exclusive_group(required=True)
    who.add_argument("--devices", type=int, help="N devices named device-001 ... device-N")
    who.add_argument("--device-list", help="a file with one device name per line (# comments)")
    init.add_argument("--host", default="127.0.0.1", help="address devices dial (and in the cert)")
    init.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    init.add_argument("--bind", default="", help="listener address if not --host, e.g. 0.0.0.0")
    init.add_argument(
        "--name", action="append", default=[], help="another name or address for the broker cert"
    )
    init.add_argument(
        "--plaintext-port", type=int, default=0, help="also a plaintext listener on 127.0.0.1"
    )
    init.add_argument(
        "--client-certs", action="store_true", help="devices also need a client certificate"
    )
    for name, text in (("add-device", "enrol devices"), ("revoke-device", "revoke devices")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("dir")
        cmd.add_argument("names", nargs="*")
        cmd.add_argument("--device-list", help="a file with one device name per line")
    run = sub.add_parser("run", help="run the site's Mosquitto in the foreground")
    run.add_argument("dir")
    return p


def read_names(args: argparse.Namespace) -> list[str]:
    names = list(getattr(args, "names", None) or [])
    if args.device_list:
        for line in Path(args.device_list).read_text("utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    if getattr(args, "devices", None) is not None:
        if not 1 <= args.devices <= 100_000:
            raise FedgeError("--devices must be 1..100000", reason="config")
        width = max(3, len(str(args.devices)))
        names += [f"device-{i:0{width}d}" for i in range(1, args.devices + 1)]
    if not names:
        raise FedgeError("no device names given", reason="config")
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "run":
            return run(load_site(args.dir))
        names = read_names(args)
        if args.command == "init":
            site = init_site(
                args.dir,
                args.federation,
                names,
                host=args.host,
                port=args.port,
                bind=args.bind,
                plaintext_port=args.plaintext_port,
                client_certs=args.client_certs,
                names=tuple(args.name),
            )
            print(f"site {site.root}: federation {site.federation}, broker {site.address} (TLS)")
            print(f"  run it:      fedge-broker run {site.root}")
            print(f"  aggregator:  {site.files.aggregator}/aggregator.toml")
            print(f"  {len(names)} devices: copy one folder of {site.files.devices}/ to each")
        elif args.command == "add-device":
            site = add_devices(args.dir, names)
            for name in names:
                print(f"enrolled {name}: {site.files.device(name)}")
            _reload(site)
        else:
            site = revoke_devices(args.dir, names)
            print(f"revoked {', '.join(names)}")
            _reload(site)
    except (FedgeError, OSError) as exc:
        print(f"fedge-broker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _reload(site: Site) -> None:
    if reload_broker(site):
        print("the running broker reloaded its passwords and ACL")
    else:
        print("no running broker of this site found; changes apply when it starts")


def run(site: Site) -> int:
    """Rewrite mosquitto.conf (a moved site keeps working), then become Mosquitto."""
    save_site(site)
    try:
        exe = find_mosquitto()
    except FedgeError as exc:
        print(f"fedge-broker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    site.files.pid.write_text(f"{os.getpid()}\n")  # exec keeps the pid: revoke can SIGHUP it
    sys.stdout.flush()
    os.execv(exe, [exe, "-c", str(site.files.conf)])
    return EXIT_FAILED  # pragma: no cover - execv does not return


if __name__ == "__main__":
    raise SystemExit(main())
