#!/usr/bin/env python3
"""Writes the labelled PII corpus used by sluice-govern's redaction test
(crates/sluice-govern/tests/pii_corpus.json): sentences with planted e-mail addresses, phone
numbers, payment cards (valid Luhn), IBANs (valid mod-97), IPv4/IPv6 addresses and secrets, plus
look-alikes that must not be flagged (Luhn-failing card-like numbers, IBANs with a bad check,
dates, versions, out-of-range dotted quads, hex digests, UUIDs, order numbers, obfuscated e-mails).
Deterministic (fixed seed): run it again and the file does not change.

    python3 scripts/pii/make_corpus.py
"""
import json
import os
import random
import string

rng = random.Random(7)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "sluice-govern", "tests", "pii_corpus.json")

FIRST = ["jane", "omar", "li", "maria", "kwame", "sofia", "arjun", "eva", "noah", "yuki"]
LAST = ["doe", "haddad", "wei", "garcia", "mensah", "rossi", "patel", "novak", "smith", "tanaka"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.io", "sub.example.net"]
TEMPLATES = [
    "Please contact {} before Friday.",
    "The customer wrote from {} yesterday.",
    "Forwarding the ticket: {}",
    "{} was listed in the form.",
    "Log line: user={} status=ok",
    "Can you check whether {} is still valid?",
]


def luhn_digit(body):
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card():
    prefix = rng.choice(["4", "51", "52", "37", "6011", "35"])
    length = 15 if prefix == "37" else 16
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    num = body + luhn_digit(body)
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain":
        return num
    sep = " " if style == "space" else "-"
    return sep.join(num[i:i + 4] for i in range(0, len(num), 4))


def bad_card():
    c = card().replace(" ", "").replace("-", "")
    last = str((int(c[-1]) + rng.randint(1, 9)) % 10)
    return c[:-1] + last


def iban(valid=True):
    country, length = rng.choice([("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18), ("ES", 24), ("IT", 27)])
    if country == "GB":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(14))
    elif country == "NL":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(10))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length - 4))
    rearranged = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in rearranged))
    check = 98 - num % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 or 3
    value = f"{country}{check:02d}{bban}"
    if rng.random() < 0.5:
        value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def email():
    sep = rng.choice([".", "_", "", "+news"])
    return f"{rng.choice(FIRST)}{sep}{rng.choice(LAST)}@{rng.choice(DOMAINS)}"


def phone():
    return rng.choice([
        lambda: f"+1 {rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        lambda: f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        lambda: f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
        lambda: f"+49 30 {rng.randint(100000, 999999)}",
        lambda: f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        lambda: f"{rng.randint(201, 989)}.{rng.randint(200, 999)}.{rng.randint(1000, 9999)}",
        lambda: f"020 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
    ])()


def ipv4():
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def ipv6():
    groups = [f"{rng.randint(0, 0xffff):x}" for _ in range(8)]
    style = rng.choice(["full", "compressed", "link"])
    if style == "full":
        return ":".join(groups)
    if style == "compressed":
        return f"2001:db8::{groups[0]}:{groups[1]}"
    return f"fe80::{groups[2]}:{groups[3]}"


def token(n, alphabet=string.ascii_letters + string.digits):
    while True:
        t = "".join(rng.choice(alphabet) for _ in range(n))
        if any(c.isdigit() for c in t) and any(c.isupper() for c in t) and any(c.islower() for c in t):
            return t


def secret():
    return rng.choice([
        lambda: "sk-proj-" + token(40),
        lambda: "sk-ant-api03-" + token(48),
        lambda: "ghp_" + token(36),
        lambda: "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        lambda: "xoxb-" + "-".join(str(rng.randint(10**10, 10**11)) for _ in range(2)) + "-" + token(24),
        lambda: "AIza" + token(35, string.ascii_letters + string.digits + "_-"),
        lambda: "sk_live_" + token(24),
        lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + token(43, string.ascii_letters + string.digits + "_-"),
        lambda: token(40, string.ascii_letters + string.digits + "+/"),
    ])()


samples = []


def add(template, values):
    """values: list of (kind or None, text); kind None = a look-alike that must not be flagged."""
    text = template.format(*[v for _, v in values])
    samples.append({"text": text, "spans": [{"kind": k, "text": v} for k, v in values if k]})


for kind, gen, n in [("email", email, 30), ("phone", phone, 35), ("card", card, 30), ("iban", iban, 30),
                     ("ipv4", ipv4, 25), ("ipv6", ipv6, 25), ("secret", secret, 36)]:
    for _ in range(n):
        add(rng.choice(TEMPLATES), [(kind, gen())])

# Two of a kind, and mixed, in one text.
for _ in range(15):
    add("From {} to {}, cc {}.", [("email", email()), ("email", email()), ("phone", phone())])
for _ in range(10):
    add("Pay with {} or transfer to {} from host {}.", [("card", card()), ("iban", iban()), ("ipv4", ipv4())])

# Look-alikes that must stay.
look_alikes = [
    lambda: ("Order number {} shipped.", [(None, bad_card())]),
    lambda: ("Reference {} in the old system.", [(None, iban(valid=False))]),
    lambda: ("Released on {}.", [(None, f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")]),
    lambda: ("Upgrade to version {} today.", [(None, f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 30)}")]),
    lambda: ("Not an address: {}.", [(None, f"{rng.randint(256, 999)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}")]),
    lambda: ("Commit {} fixed it.", [(None, "".join(rng.choice("0123456789abcdef") for _ in range(40)))]),
    lambda: ("Checksum sha256:{}", [(None, "".join(rng.choice("0123456789abcdef") for _ in range(64)))]),
    lambda: ("Request id {} failed.", [(None, f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-a{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}")]),
    lambda: ("Write to {} (no real address).", [(None, f"{rng.choice(FIRST)} at example dot com")]),
    lambda: ("The meeting is at {}.", [(None, f"{rng.randint(1, 12)}:{rng.randint(10, 59)} pm")]),
    lambda: ("Total: {} items, {} EUR.", [(None, str(rng.randint(1, 99))), (None, f"{rng.randint(100, 99999)}.{rng.randint(10, 99)}")]),
    lambda: ("Call extension {} internally.", [(None, str(rng.randint(100, 9999)))]),
    lambda: ("The ratio was {}.", [(None, f"{rng.randint(1, 9)}:{rng.randint(1, 9)}")]),
    lambda: ("Variable name {} is too long.", [(None, "calculate_" + "_".join(rng.choice(["total", "user", "value", "index", "count"]) for _ in range(5)))]),
    lambda: ("Tracking {} in progress.", [(None, "1Z" + "".join(rng.choice(string.digits) for _ in range(10)))]),
]
for i in range(90):
    template, values = look_alikes[i % len(look_alikes)]()
    add(template, values)

# Hand-written edge cases.
samples += [
    {"text": "Email me at first.last+tag@sub.example.co.uk, thanks!", "spans": [{"kind": "email", "text": "first.last+tag@sub.example.co.uk"}]},
    {"text": "Loopback ::1 and ::ffff:192.0.2.128 are both addresses.", "spans": [{"kind": "ipv6", "text": "::1"}, {"kind": "ipv6", "text": "::ffff:192.0.2.128"}]},
    {"text": "Card 4111111111111111 expires 12/29.", "spans": [{"kind": "card", "text": "4111111111111111"}]},
    {"text": "The IBAN GB82 WEST 1234 5698 7654 32 belongs to Mr Smith.", "spans": [{"kind": "iban", "text": "GB82 WEST 1234 5698 7654 32"}]},
    {"text": "PEM: -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----", "spans": [{"kind": "secret", "text": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"}]},
    {"text": "A C++ std::vector<int>::iterator is not an address.", "spans": []},
    {"text": "Times 10:30:45 and 12:00 are not IPv6.", "spans": []},
    {"text": "The hash 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 is public.", "spans": []},
]

with open(OUT, "w") as f:
    json.dump(samples, f, indent=1, ensure_ascii=False)
    f.write("\n")
kinds = {}
for s in samples:
    for sp in s["spans"]:
        kinds[sp["kind"]] = kinds.get(sp["kind"], 0) + 1
print(f"{len(samples)} samples, {sum(1 for s in samples if not s['spans'])} without PII; spans by kind: {kinds}")
