"""Loading and validating topology files: every error named by its key path."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gatepost.topology import HostPort, Problem, TopologyError, check, load

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml"))

BASE = """\
[network]
name = "ACME"
domains = ["acme.example"]

[postoffices.HQ]
domains = ["hq.acme.example"]
mailboxes = ["alice", "postmaster"]

[postoffices.SALES]
domains = ["sales.acme.example"]
mailboxes = ["carol", "postmaster"]
links = ["HQ"]

[gateways.GW1]
postoffice = "HQ"
listen = "127.0.0.1:2525"
smarthost = "127.0.0.1:2526"
serves = ["HQ", "SALES"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.toml"
    path.write_text(text)
    return path


def variant(*edits: tuple[str, str], extra: str = "") -> str:
    text = BASE
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text + extra


def findings(tmp_path: Path, text: str) -> tuple[list[Problem], list[Problem]]:
    topo, errors, warnings = check(write(tmp_path, text))
    assert (topo is None) == bool(errors)
    return errors, warnings


def test_base_file_is_clean(tmp_path: Path) -> None:
    assert findings(tmp_path, BASE) == ([], [])


GW2_SAME_LISTEN = """
[gateways.GW2]
postoffice = "SALES"
role = "receive"
listen = "127.0.0.1:2525"
"""

ERRORS = [
    (variant(('"127.0.0.1:2526"', '"999.0.0.1:25"')), "gateways.GW1.smarthost", "bad host"),
    (
        variant(extra=GW2_SAME_LISTEN.replace("127.0.0.1:2525", "0.0.0.0:2525")),
        "gateways.GW2.listen",
        "already used by gateways.GW1.listen",
    ),
    (
        variant(extra='[capture]\nlisten = "localhost:2525"\n'),
        "capture.listen",
        "already used by gateways.GW1.listen",
    ),
    # (text, key, message fragment)
    (variant(('name = "ACME"', 'name = "ACME')), "<file>", "line 2"),
    (variant(('[network]\nname = "ACME"\ndomains = ["acme.example"]\n', "")), "network", "missing"),
    (variant(('name = "ACME"\n', "")), "network.name", "missing"),
    (variant(('name = "ACME"', "name = 5")), "network.name", "must be a string"),
    (variant(('name = "ACME"', 'name = "AC/ME"')), "network.name", "bad name"),
    (variant(extra="colour = 1\n"), "gateways.GW1.colour", "unknown key"),
    (variant(('name = "ACME"', 'name = "ACME"\ncolor = 1')), "network.color", "unknown key"),
    (variant(('links = ["HQ"]', 'links = ["HQ"]\nlnks = []')), "postoffices.SALES.lnks", "unknown"),
    (variant(("[network]", "top = 1\n[network]")), "top", "unknown key"),
    (
        variant(extra='[capture]\nlisten = "127.0.0.1:9"\nfolder = "x"\n'),
        "capture.folder",
        "unknown",
    ),
    (
        variant(('mailboxes = ["alice", "postmaster"]', 'mailboxes = "alice"')),
        "postoffices.HQ.mailboxes",
        "must be a list of strings",
    ),
    (
        variant(('mailboxes = ["alice", "postmaster"]', 'mailboxes = ["postmaster", 3]')),
        "postoffices.HQ.mailboxes[1]",
        "must be a string",
    ),
    (
        variant(("[postoffices.SALES]", "[postoffices.SALES.x]")),
        "postoffices.SALES.x",
        "unknown key",
    ),
    (
        variant(('links = ["HQ"]', 'links = ["MARS"]')),
        "postoffices.SALES.links[0]",
        "unknown postoffice",
    ),
    (
        variant(('links = ["HQ"]', 'links = ["hq"]')),
        "postoffices.SALES.links[0]",
        "did you mean 'HQ'",
    ),
    (variant(('links = ["HQ"]', 'links = ["SALES"]')), "postoffices.SALES.links[0]", "itself"),
    (
        variant(('serves = ["HQ", "SALES"]', 'serves = ["HQ", "SALE"]')),
        "gateways.GW1.serves[1]",
        "unknown postoffice 'SALE'",
    ),
    (variant(('postoffice = "HQ"', 'postoffice = "MARS"')), "gateways.GW1.postoffice", "unknown"),
    (variant(('postoffice = "HQ"\n', "")), "gateways.GW1.postoffice", "missing"),
    (
        variant(('domains = ["sales.acme.example"]', 'domains = ["HQ.acme.example"]')),
        "postoffices.SALES.domains[0]",
        "already belongs to postoffice HQ",
    ),
    (
        variant(('domains = ["hq.acme.example"]', 'domains = ["acme.example"]')),
        "postoffices.HQ.domains[0]",
        "already belongs to network",
    ),
    (
        variant(('mailboxes = ["carol", "postmaster"]', 'mailboxes = ["Alice", "postmaster"]')),
        "postoffices.SALES.mailboxes[0]",
        "also exists in postoffice HQ",
    ),
    (
        variant(('mailboxes = ["carol", "postmaster"]', 'mailboxes = ["carol", "CAROL"]')),
        "postoffices.SALES.mailboxes[1]",
        "listed twice",
    ),
    (
        variant(('postoffice = "HQ"', 'postoffice = "HQ"\nrole = "sideways"')),
        "gateways.GW1.role",
        "must be one of: both, send, receive",
    ),
    (
        variant(('smarthost = "127.0.0.1:2526"\n', "")),
        "gateways.GW1.smarthost",
        "needs a smarthost",
    ),
    (variant(('listen = "127.0.0.1:2525"\n', "")), "gateways.GW1.listen", "needs a listen"),
    (variant(('serves = ["HQ", "SALES"]', 'serves = ["HQ"]')), "postoffices.SALES", "no sending"),
    (variant(('"127.0.0.1:2525"', '"127.0.0.1:65536"')), "gateways.GW1.listen", "bad port"),
    (variant(('"127.0.0.1:2525"', '"127.0.0.1"')), "gateways.GW1.listen", "expected host:port"),
    (variant(('"127.0.0.1:2525"', '"127.0.0.1:x"')), "gateways.GW1.listen", "bad port"),
    (variant(('"127.0.0.1:2525"', '"2525"')), "gateways.GW1.listen", "expected host:port"),
    (variant(('"127.0.0.1:2526"', '"smart_host:25"')), "gateways.GW1.smarthost", "bad host"),
    (variant(('"127.0.0.1:2526"', '"[::zz]:25"')), "gateways.GW1.smarthost", "bad host:port"),
    (
        variant(extra='relay_from = ["127.0.0.0/8", "10.0.0.1/8"]\n'),
        "gateways.GW1.relay_from[1]",
        "bad CIDR",
    ),
    (variant(extra='relay_from = ["banana"]\n'), "gateways.GW1.relay_from[0]", "bad CIDR"),
    (
        variant(('"hq.acme.example"', '"-hq.acme.example"')),
        "postoffices.HQ.domains[0]",
        "bad domain",
    ),
    (variant(('"hq.acme.example"', '"hq..acme"')), "postoffices.HQ.domains[0]", "bad domain"),
    (variant(('"alice"', '"al ice"')), "postoffices.HQ.mailboxes[0]", "bad mailbox name"),
    (variant(('"alice"', '"' + "a" * 65 + '"')), "postoffices.HQ.mailboxes[0]", "1-64"),
    (
        variant(('name = "ACME"', 'name = "ACME"\nstore = "mysql://db/mail"')),
        "network.store",
        "sqlite:",
    ),
    (
        variant(('name = "ACME"', 'name = "ACME"\nstore = "postgres://db"')),
        "network.store",
        "names no database",
    ),
    (
        variant(('name = "ACME"', 'name = "ACME"\nstore = "postgresql://mail:s3cret@db/mail"')),
        "network.store",
        "never write a password",
    ),
    (
        variant(('name = "ACME"', 'name = "ACME"\nstore = "postgresql://db/mail?password=x"')),
        "network.store",
        "never write a password",
    ),
    (
        variant(('name = "ACME"', 'name = "ACME"\nstore = "postgresql://db:99999/mail"')),
        "network.store",
        "bad PostgreSQL URL",
    ),
    (
        variant(('name = "ACME"', 'name = "ACME"\nstore_password_env = "PG PASS"')),
        "network.store_password_env",
        "not an environment variable name",
    ),
    (
        variant(('name = "ACME"', 'name = "ACME"\nstore_password_env = "PGPASS"')),
        "network.store",
        "are for a postgresql:// store",
    ),
    (
        variant((
            'name = "ACME"',
            ('name = "ACME"\nstore = "postgresql://mail@db/mail"\nstore_password_env = "P"\n'
             'store_password_file = "pw"'),
        )),
        "network.store_password_file",
        "not both",
    ),
    (variant(extra=GW2_SAME_LISTEN), "gateways.GW2.listen", "already used by gateways.GW1.listen"),
    (
        variant(extra='[capture]\nlisten = "127.0.0.1:2525"\n'),
        "capture.listen",
        "already used by gateways.GW1.listen",
    ),
    (
        variant(('listen = "127.0.0.1:2525"', 'listen = "127.0.0.1:2526"')),
        "gateways.GW1.smarthost",
        "mail loop",
    ),
    (
        variant(("[postoffices.SALES]", "[postoffices.hq]\n[postoffices.SALES]")),
        "postoffices.hq",
        "clashes with HQ",
    ),
    (
        variant(("[postoffices.SALES]", '[postoffices."S/X"]\n[postoffices.SALES]')),
        "postoffices.S/X",
        "bad name",
    ),
    (
        variant(('[network]\nname = "ACME"\ndomains = ["acme.example"]\n', 'network = "ACME"\n')),
        "network",
        "must be a table",
    ),
    (
        'postoffices = 1\ngateways = {GW1 = 3}\n[network]\nname = "A"\n',
        "postoffices",
        "must be a table",
    ),
    ('postoffices = 1\ngateways = {GW1 = 3}\n[network]\nname = "A"\n', "gateways.GW1", "a table"),
    ('[network]\nname = "A"\n', "postoffices", "no postoffices"),
    (
        variant(('[network]\nname = "ACME"', '[network]\nname = "ACME"\nstore = "sqlite:"')),
        "network.store",
        "must be a URL",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), ERRORS)
def test_error_is_named_by_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    errors, _warnings = findings(tmp_path, text)
    matching = [p for p in errors if p.key == key]
    assert matching, f"no error at {key}; got {errors}"
    assert any(fragment in p.message for p in matching), matching


def test_a_postgresql_store_keeps_its_url_and_where_its_password_lives(tmp_path: Path) -> None:
    url = "postgresql://mail@db.example:5433/acme?sslmode=verify-full"
    store = f'name = "ACME"\nstore = "{url}"\nstore_password_file = "secrets/pg"'
    text = variant(('name = "ACME"', store))
    topo = load(write(tmp_path, text))
    assert topo.store == url
    assert topo.store_password_file == (tmp_path / "secrets" / "pg").resolve()
    assert topo.store_password_env is None


def test_bad_value_is_not_also_reported_missing(tmp_path: Path) -> None:
    errors, _ = findings(tmp_path, variant(('"127.0.0.1:2525"', '"127.0.0.1:-1"')))
    assert [p.key for p in errors] == ["gateways.GW1.listen"]


def test_missing_file(tmp_path: Path) -> None:
    topo, errors, _ = check(tmp_path / "nope.toml")
    assert topo is None
    assert [p.key for p in errors] == ["<file>"]
    assert "cannot read" in errors[0].message


def test_all_errors_reported_together(tmp_path: Path) -> None:
    text = variant(
        ('links = ["HQ"]', 'links = ["MARS"]'),
        ('postoffice = "HQ"', 'postoffice = "HQ"\nrole = "up"'),
        ('"127.0.0.1:2526"', '"127.0.0.1:99999"'),
        extra='relay_from = ["nope"]\n',
    )
    with pytest.raises(TopologyError) as caught:
        load(write(tmp_path, text))
    keys = {p.key for p in caught.value.problems}
    expected = {
        "postoffices.SALES.links[0]",
        "gateways.GW1.role",
        "gateways.GW1.smarthost",
        "gateways.GW1.relay_from[0]",
    }
    assert expected <= keys
    assert "gateways.GW1.role: role 'up'" in str(caught.value)


WARNINGS = [
    (
        variant(('mailboxes = ["carol", "postmaster"]', 'mailboxes = ["carol"]')),
        "postoffices.SALES.mailboxes",
        "no postmaster",
    ),
    (
        variant(('domains = ["acme.example"]\n', ""), ('domains = ["sales.acme.example"]\n', "")),
        "postoffices.SALES.domains",
        "SMTP cannot reach it",
    ),
    (
        variant(
            extra='[gateways.GW2]\npostoffice = "HQ"\nrole = "receive"\nlisten = "127.0.0.1:0"\n'
        ),
        "gateways.GW2.postoffice",
        "already hosts gateway GW1",
    ),
    (
        variant(
            extra='[gateways.GW2]\npostoffice = "SALES"\nrole = "send"\nlisten = "[::1]:7"\n'
            'smarthost = "localhost:25"\n'
        ),
        "gateways.GW2.listen",
        "ignored",
    ),
    (variant(('links = ["HQ"]', "links = []")), "gateways.GW1.serves[1]", "would bounce"),
    (
        variant(('links = ["HQ"]', "links = []")),
        "gateways.GW1.postoffice",
        "from HQ to SALES: mail received",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), WARNINGS)
def test_warning_is_named_by_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    errors, warnings = findings(tmp_path, text)
    assert errors == []
    assert any(p.key == key and fragment in p.message for p in warnings), warnings


def test_no_domain_is_fine_under_a_network_domain(tmp_path: Path) -> None:
    text = variant(('domains = ["sales.acme.example"]\n', ""))
    assert findings(tmp_path, text) == ([], [])


def test_same_mailbox_in_two_postoffices_is_fine_without_network_domains(tmp_path: Path) -> None:
    text = variant(
        ('domains = ["acme.example"]\n', ""),
        ('mailboxes = ["carol", "postmaster"]', 'mailboxes = ["alice", "postmaster"]'),
    )
    assert findings(tmp_path, text) == ([], [])


def test_port_zero_listeners_do_not_clash(tmp_path: Path) -> None:
    text = variant(
        ('listen = "127.0.0.1:2525"', 'listen = "127.0.0.1:0"'),
        extra=GW2_SAME_LISTEN.replace("2525", "0") + '[capture]\nlisten = "127.0.0.1:0"\n',
    )
    errors, _ = findings(tmp_path, text)
    assert errors == []


def test_different_hosts_on_one_port_do_not_clash(tmp_path: Path) -> None:
    text = variant(extra=GW2_SAME_LISTEN.replace("127.0.0.1:2525", "127.0.0.2:2525"))
    errors, _ = findings(tmp_path, text)
    assert errors == []


def test_loaded_values_are_normalised(tmp_path: Path) -> None:
    text = variant(
        ('"hq.acme.example"', '"HQ.Acme.Example"'),
        ('"alice"', '"Alice"'),
        ('"127.0.0.1:2526"', '"[::1]:25"'),
        extra='relay_from = ["10.0.0.0/8", "::1/128"]\n',
    )
    topo = load(write(tmp_path, text))
    assert topo.postoffices["HQ"].domains == ("hq.acme.example",)
    assert topo.postoffices["HQ"].mailboxes == ("alice", "postmaster")
    assert topo.gateways["GW1"].smarthost == HostPort("::1", 25)
    assert str(topo.gateways["GW1"].smarthost) == "[::1]:25"
    assert topo.gateways["GW1"].relay_from == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert topo.gateways["GW1"].role == "both"
    assert topo.source == (tmp_path / "topo.toml").resolve()


def test_links_are_symmetric_and_in_file_order(tmp_path: Path) -> None:
    text = variant(
        extra='[postoffices.ENG]\ndomains = ["eng.acme.example"]\n'
        'mailboxes = ["postmaster"]\nlinks = ["SALES", "HQ", "HQ"]\n'
    )
    text = text.replace('serves = ["HQ", "SALES"]', 'serves = ["HQ", "SALES", "ENG"]')
    topo = load(write(tmp_path, text))
    assert topo.postoffices["HQ"].links == ("SALES", "ENG")
    assert topo.postoffices["SALES"].links == ("HQ", "ENG")
    assert topo.postoffices["ENG"].links == ("HQ", "SALES")
    assert list(topo.postoffices) == ["HQ", "SALES", "ENG"]


def test_store_and_capture_paths_resolve_against_the_file(tmp_path: Path) -> None:
    text = variant(
        ('name = "ACME"', 'name = "ACME"\nstore = "sqlite:data/x.db"'),
        extra='[capture]\nlisten = "127.0.0.1:2599"\ndir = "out/mail"\n',
    )
    topo = load(write(tmp_path, text))
    assert topo.store == f"sqlite:{tmp_path.resolve() / 'data' / 'x.db'}"
    assert topo.capture is not None
    assert topo.capture.dir == tmp_path.resolve() / "out" / "mail"
    assert topo.capture.listen == HostPort("127.0.0.1", 2599)


def test_defaults_for_store_and_capture_dir(tmp_path: Path) -> None:
    topo = load(write(tmp_path, variant(extra='[capture]\nlisten = "localhost:2599"\n')))
    assert topo.store == f"sqlite:{tmp_path.resolve() / 'var' / 'acme.db'}"
    assert topo.capture is not None
    assert topo.capture.dir == tmp_path.resolve() / "var" / "captured"


def test_absolute_store_path_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "a.db"
    topo = load(
        write(tmp_path, variant(('name = "ACME"', f'name = "ACME"\nstore = "sqlite:{db}"')))
    )
    assert topo.store == f"sqlite:{db.resolve()}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_checks_clean(example: Path) -> None:
    topo, errors, warnings = check(example)
    assert errors == []
    assert warnings == []
    assert topo is not None
    downstream = set(topo.postoffices) - {g.postoffice for g in topo.gateways.values()}
    assert len(downstream) >= 3


def test_examples_use_distinct_ports() -> None:
    assert len(EXAMPLES) == 4
    ports: dict[int, str] = {}
    for example in EXAMPLES:
        topo = load(example)
        mine = {g.listen.port for g in topo.gateways.values() if g.listen}
        mine |= {g.smarthost.port for g in topo.gateways.values() if g.smarthost}
        for port in mine:
            assert ports.setdefault(port, example.name) == example.name, port


def test_limits_table_sets_receive_limits(tmp_path: Path) -> None:
    extra = '\n[limits]\nmax_message_size = 1000000\nidle_timeout = "2m"\ngreet_wait = 1.5\n'
    topo = load(write(tmp_path, variant(extra=extra)))
    assert topo.limits.max_message_size == 1_000_000
    assert topo.limits.idle_timeout == 120.0
    assert topo.limits.greet_wait == 1.5
    assert topo.limits.max_recipients == 1000  # untouched keys keep their defaults


def test_limits_errors_are_named_by_key(tmp_path: Path) -> None:
    extra = '\n[limits]\nmax_recipients = 0\ncommand_timeout = "soon"\nspeed = 1\n'
    errors, _ = findings(tmp_path, variant(extra=extra))
    keys = {problem.key for problem in errors}
    assert keys == {"limits.max_recipients", "limits.command_timeout", "limits.speed"}


# ---- mail loops: the hop limit, and smart hosts that hand mail straight back ----


def test_hopcount_limit_is_50_unless_set(tmp_path: Path) -> None:
    assert load(write(tmp_path, BASE)).limits.hopcount_limit == 50
    topo = load(write(tmp_path, variant(extra="\n[limits]\nhopcount_limit = 10\n")))
    assert topo.limits.hopcount_limit == 10


@pytest.mark.parametrize("value", ["0", "-3", '"50"', "true", "2.5"])
def test_bad_hopcount_limit_is_named_by_key(tmp_path: Path, value: str) -> None:
    errors, _ = findings(tmp_path, variant(extra=f"\n[limits]\nhopcount_limit = {value}\n"))
    assert [(p.key, p.message) for p in errors] == [
        ("limits.hopcount_limit", "must be a whole number of at least 1")
    ]


def gateway(name: str, postoffice: str, role: str, **keys: str) -> str:
    lines = [f"[gateways.{name}]", f'postoffice = "{postoffice}"', f'role = "{role}"']
    lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n" + "\n".join(lines) + "\n"


# GW1 listens on 127.0.0.1:2525; each case adds or changes a smart host.
LOOPS = [
    (  # two gateways, each the other's smart host
        variant(
            ('serves = ["HQ", "SALES"]', 'serves = ["HQ"]'),
            extra=gateway("GW2", "SALES", "both", listen='"127.0.0.1:2600"',
                          smarthost='"127.0.0.1:2525"', serves='["SALES"]'),
        ).replace('smarthost = "127.0.0.1:2526"', 'smarthost = "127.0.0.1:2600"'),
        {"gateways.GW1.smarthost": "gateways.GW2", "gateways.GW2.smarthost": "gateways.GW1"},
    ),
    (  # the second of several smart hosts; a send gateway
        variant(
            ('serves = ["HQ", "SALES"]', 'serves = ["HQ"]'),
            extra=gateway("GW2", "SALES", "send", serves='["SALES"]',
                          smarthosts='["relay.example:25", "localhost:2525"]'),
        ),
        {"gateways.GW2.smarthosts[1]": "gateways.GW1"},
    ),
    (  # its own listen address
        variant(('listen = "127.0.0.1:2525"', 'listen = "127.0.0.1:2526"')),
        {"gateways.GW1.smarthost": "gateways.GW1 (this gateway)"},
    ),
    (  # a wildcard listen address, reached over loopback
        variant(
            ('listen = "127.0.0.1:2525"', 'listen = "0.0.0.0:2525"'),
            ('smarthost = "127.0.0.1:2526"', 'smarthost = "[::1]:2525"'),
        ),
        {"gateways.GW1.smarthost": "gateways.GW1 (this gateway)"},
    ),
    (
        variant(
            ('listen = "127.0.0.1:2525"', 'listen = "[::]:2525"'),
            ('smarthost = "127.0.0.1:2526"', 'smarthost = "127.0.0.1:2525"'),
        ),
        {"gateways.GW1.smarthost": "gateways.GW1 (this gateway)"},
    ),
    (
        variant(('smarthost = "127.0.0.1:2526"', 'smarthost = "localhost:2525"')),
        {"gateways.GW1.smarthost": "gateways.GW1 (this gateway)"},
    ),
    (
        variant(('smarthost = "127.0.0.1:2526"', 'smarthost = "0.0.0.0:2525"')),
        {"gateways.GW1.smarthost": "gateways.GW1 (this gateway)"},
    ),
]


@pytest.mark.parametrize(("text", "expected"), LOOPS)
def test_smart_host_that_is_a_listen_address_is_refused(
    tmp_path: Path, text: str, expected: dict[str, str]
) -> None:
    errors, _ = findings(tmp_path, text)
    loops = {p.key: p.message for p in errors if "mail loop" in p.message}
    assert set(loops) == set(expected), errors
    for key, owner in expected.items():
        assert f"is the listen address of {owner}: a mail loop" in loops[key]


NOT_LOOPS = [
    # the capture sink is the local smart host by design
    variant(
        ('smarthost = "127.0.0.1:2526"', 'smarthost = "127.0.0.1:2599"'),
        extra='[capture]\nlisten = "127.0.0.1:2599"\n',
    ),
    # another loopback address, another port, a send gateway's ignored listen
    variant(('smarthost = "127.0.0.1:2526"', 'smarthost = "127.0.0.2:2525"')),
    variant(('smarthost = "127.0.0.1:2526"', 'smarthost = "[::1]:2525"')),
    variant(('smarthost = "127.0.0.1:2526"', 'smarthost = "10.0.0.1:2525"'),
            ('listen = "127.0.0.1:2525"', 'listen = "0.0.0.0:2525"')),
    variant(('smarthost = "127.0.0.1:2526"', 'smarthost = "localhost:2526"')),
    variant(
        ('serves = ["HQ", "SALES"]', 'serves = ["HQ"]'),
        ('smarthost = "127.0.0.1:2526"', 'smarthost = "127.0.0.1:2600"'),
        extra=gateway("GW2", "SALES", "send", listen='"127.0.0.1:2600"',
                      smarthost='"relay.example:25"', serves='["SALES"]'),
    ),
    # a receive gateway's ignored smart host
    variant(extra=gateway("GW2", "SALES", "receive", listen='"127.0.0.1:2600"',
                          smarthost='"127.0.0.1:2525"')),
]


@pytest.mark.parametrize("text", NOT_LOOPS)
def test_smart_host_that_is_no_listen_address_is_accepted(tmp_path: Path, text: str) -> None:
    errors, _ = findings(tmp_path, text)
    assert errors == []
