"""A private Postfix instance for comparison: its own config and queue under a temp folder.

Writes main.cf and master.cf into DIR/etc, starts it with `postfix -c DIR/etc start`
and stops it with `postfix -c DIR/etc stop`. It relays foreign mail to the sink at
[127.0.0.1]:SINKPORT and delivers hq.bench.example to virtual maildirs under DIR/mail.
Never touches /etc/postfix or the system queue.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from bench.common import INBOUND_DOMAIN, INBOUND_USER, BenchError, wait_port, wait_until

POSTFIX = "/usr/sbin/postfix"
MAIL_UID = 65534  # nobody: owns the virtual maildirs

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/spool
data_directory = {root}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
myhostname = bench.localhost
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:{sink_port}
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = inline:{{ {{{user}@{domain}={domain}/{user}/}} }}
virtual_mailbox_base = {root}/mail
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{uid}
virtual_minimum_uid = 100
"""


class PostfixInstance:
    """One private Postfix: set up in `root`, listening on `port`, relaying to `sink_port`."""

    def __init__(self, root: Path, port: int, sink_port: int) -> None:
        self.root, self.port, self.sink_port = root, port, sink_port
        self.etc = root / "etc"
        self.maildir_new = root / "mail" / INBOUND_DOMAIN / INBOUND_USER / "new"

    def main_cf(self) -> str:
        return MAIN_CF.format(root=self.root, sink_port=self.sink_port, domain=INBOUND_DOMAIN,
                              user=INBOUND_USER, uid=MAIL_UID)

    def master_cf(self) -> str:
        return MASTER_CF.format(port=self.port)

    def setup(self) -> None:
        self.root.chmod(0o755)  # postfix and the mailbox owner must traverse it
        for name in ("etc", "spool", "data", "mail"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.root / "data", postfix_user.pw_uid, postfix_user.pw_gid)
        os.chown(self.root / "mail", MAIL_UID, MAIL_UID)
        (self.etc / "main.cf").write_text(self.main_cf())
        (self.etc / "master.cf").write_text(self.master_cf())
        shutil.copy("/etc/postfix/dynamicmaps.cf", self.etc / "dynamicmaps.cf")

    def start(self) -> None:
        self._postfix("start")
        wait_port(self.port, 30, "postfix smtpd")

    def stop(self) -> None:
        """Stop the instance and wait until its master process has exited."""
        pid_file = self.root / "spool" / "pid" / "master.pid"
        master = Path(f"/proc/{pid_file.read_text().strip()}") if pid_file.exists() else None
        self._postfix("stop", check=False)
        if master is not None:
            wait_until(lambda: not master.exists(), 30, "postfix master to exit")

    def cpu_roots(self) -> dict[str, list[int]]:
        """The master process: its services are its children (and reaped by it)."""
        pid_file = self.root / "spool" / "pid" / "master.pid"
        return {"postfix": [int(pid_file.read_text().strip())]} if pid_file.exists() else {}

    def delivered_count(self) -> int:
        """Messages in the maildir's new/ (the inbound finish line)."""
        try:
            with os.scandir(self.maildir_new) as entries:
                return sum(1 for _ in entries)
        except FileNotFoundError:
            return 0

    def version(self) -> str:
        out = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                             check=False, capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def _postfix(self, action: str, check: bool = True) -> None:
        done = subprocess.run([POSTFIX, "-c", str(self.etc), action], check=False,
                              capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            log = self.root / "maillog"
            tail = log.read_text()[-2000:] if log.exists() else done.stderr
            raise BenchError(f"postfix {action} failed: {tail}")
