#!/usr/bin/env python3
"""Writes the committed seed corpus, Tests/Fuzz/corpus/HARNESS/*: small valid and invalid inputs
taken from the unit tests' tables. Run it again after changing the lists (it replaces the
folders' seed-* files; files libFuzzer found and someone committed stay).

The HTTP harnesses read three control bytes before the message: two split points and a byte
that picks limits and options (see the harness sources)."""
import hashlib
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Control byte values (harness sources): request limits = byte % 5 (0 defaults, 1 tiny 64/4/16,
# 2 small 256/8/64, 3 URI above head 128/3/200, 4 1k/20/512); response limits = byte % 4 and
# method = (byte / 4) % 4 (GET, HEAD, POST, OPTIONS); chunked extension limit = byte % 4
# (4096, 0, 1, 8) and trailer limit = (byte / 4) % 5 (16k, 0, 1, 8, 40).
HOST = "Host: a.example\r\n"

requests = [
    (0, "GET / HTTP/1.1\r\n" + HOST + "\r\n"),
    (0, "GET /a/b?c=d HTTP/1.1\r\nHost: a.example:8080\r\nUser-Agent: t\r\nAccept:  */* \r\n\r\n"),
    (0, "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n"),
    (0, "GET https://[::1]:8080?q=1 HTTP/1.1\r\nHost: b\r\n\r\n"),
    (0, "OPTIONS * HTTP/1.1\r\n" + HOST + "\r\n"),
    (0, "GET / HTTP/1.0\r\n\r\n"),
    (0, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    (0, "POST /upload HTTP/1.1\r\n" + HOST + "Content-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n" + HOST + "\r\n"),
    (0, "POST /upload HTTP/1.1\r\n" + HOST + "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"),
    (0, "GET /ws HTTP/1.1\r\n" + HOST + "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    (0, "GET / HTTP/1.1\r\n" + HOST + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
    (0, "GET / HTTP/1.1\r\n" + HOST + "X-Secret: s\r\nConnection: x-secret, close\r\nX-Request-Id: abc-123_x.y:Z\r\n"
        "X-Forwarded-For: 1.2.3.4\r\nForwarded: for=x\r\nCookie: a=b\r\n\r\n"),
    (0, "\r\nGET / HTTP/1.1\r\n" + HOST + "\r\n\r\nGET /2 HTTP/1.1\r\n" + HOST + "\r\n"),
    (0, "GET / HTTP/1.1\r\n" + HOST + "X-Foo: a\r\n b\r\n\r\n"),
    (0, "GET / HTTP/1.1\r\nHost: a.example\n\r\n"),
    (0, "POST / HTTP/1.1\r\n" + HOST + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
    (0, "POST / HTTP/1.1\r\n" + HOST + "Content-Length: 5, 6\r\n\r\n"),
    (0, "GET / HTTP/1.1\r\n" + HOST + HOST + "\r\n"),
    (0, "GET /x#y HTTP/1.1\r\n" + HOST + "\r\n"),
    (0, "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"),
    (0, "GET / HTTP/2.0\r\n" + HOST + "\r\n"),
    (0, "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n"),
    (0, "POST / HTTP/1.1\r\n" + HOST + "Transfer-Encoding: gzip, chunked\r\n\r\n"),
    (1, "GET /0123456789abcdef HTTP/1.1\r\n" + HOST + "\r\n"),
    (1, "GET / HTTP/1.1\r\n" + HOST + "X: " + "v" * 24 + "\r\n\r\n"),
    (2, "GET / HTTP/1.1\r\n" + HOST + "".join("X-%d: v\r\n" % i for i in range(8)) + "\r\n"),
    (3, "GET /" + "a" * 150 + " HTTP/1.1\r\n" + HOST + "\r\n"),
    (1, "GET / HTTP/1.1\r\n" + HOST + "X-Pad: " + "p" * 50 + "\nX: y\r\n\r\n"),
]

responses = [
    (0, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    (0, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"),
    (0, "HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\nConnection: foo, Close\r\nFoo: x\r\n\r\n"),
    (0, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
    (0, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    (0, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nContent-Length: 5\r\n\r\n"),
    (0, "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
    (0, "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n"),
    (4, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
    (0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\n"),
    (0, "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"),
    (0, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n"),
    (0, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"),
    (0, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
    (0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
    (0, "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    (0, "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"),
    (0, "HTTP/1.1 2x0 OK\r\n\r\n"),
    (0, "HTTP/1.1 600 Custom\r\nContent-Length: 0\r\n\r\n"),
    (0, "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n"),
    (0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: a\r\n b\r\n\r\n"),
    (0, "SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    (1, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: 0123456789012345678901234567890123456789\r\n\r\n"),
    (1, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n"),
    (8, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X\r\n\r\n"),
    (0x40, "HTTP/1.0 200 OK\r\nClose: x\r\nContent-Length: 0\r\n\r\n"),
]

bodies = [
    (0, "5\r\nhello\r\n0\r\n\r\n"),
    (0, "0\r\n\r\n"),
    (0, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    (0, "A\r\n0123456789\r\n0\r\n\r\n"),
    (0, "0005\r\nhello\r\n000\r\n\r\n"),
    (0, "5;name=value\r\nhello\r\n0\r\n\r\n"),
    (0, "5;name=\"a b;c\"\r\nhello\r\n0;last\r\n\r\n"),
    (0, "5 \t;a=1\r\nhello\r\n0\r\n\r\n"),
    (0, "5\r\nhello\r\n0\r\nChecksum: abc\r\n\r\n"),
    (0, "5\r\nhello\r\n0\r\nA: 1\r\nB-2: x y\r\n\r\n"),
    (0, "4\r\n\r\n\r\n\r\n0\r\n\r\n"),
    (0, "5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n"),
    (0, "00000000000000A\r\n0123456789\r\n0\r\n\r\n"),
    (0, "5\r\nhel"),
    (0, "0000000000000005\r\nhello\r\n0\r\n\r\n"),
    (0, "5 6\r\nhello\r\n0\r\n\r\n"),
    (0, "5\nhello\r\n0\r\n\r\n"),
    (0, "5\r\nhello!\r\n0\r\n\r\n"),
    (0, "0\r\nChecksum : abc\r\n\r\n"),
    (0, "0\r\nA: 1\r\n 2\r\n\r\n"),
    (0, "0\r\nA: 1\x002\r\n\r\n"),
    (3, "5;abcdefghijk\r\nhello\r\n0\r\n\r\n"),
    (12, "0\r\nA: 0123456789\r\n\r\n"),
    (16, "3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n"),
]

MINIMAL = "listen 127.0.0.1:8080\napp a {\n    host *\n    blue 127.0.0.1:8091\n    green 127.0.0.1:8092\n}\n"
APPS = "app a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n"


def example():
    with open(os.path.join(HERE, "../../conf/cutover.conf")) as f:
        text = f.read().replace("plans plans", "plans p.conf")
    # Without its comments (it stays under the harness's 2 KiB max_len).
    lines = (re.sub(r"\s+#.*$", "", line) for line in text.splitlines())
    return "".join(line + "\n" for line in lines if line.strip() and not line.lstrip().startswith("#"))


def plan_file(name):
    with open(os.path.join(HERE, "../../conf/plans", name)) as f:
        return f.read()


configs = [
    example(),
    MINIMAL,
    MINIMAL.replace("\n", "\r\n"),
    "# comment only\n",
    "",
    "listen [::1]:8080\nlisten *:8081\nlisten 0.0.0.0:0\nlisten [2001:DB8::1]:443\napp a {\n    host Api.Example.com www.example.com\n"
    "    path /api/\n    health_path /api/status\n    health_host status.internal\n    verify /a /b\n"
    "    blue [::1]:8091 localhost:8093 Backend-1.internal:80\n    green 10.0.0.2:443\n    upstream_tls verify ca.pem sni green.internal\n}\n",
    MINIMAL + "workers 8\nadmin_socket run/cutover.sock\nadmin_mode 0640\nadmin_group deploy\nstate_file off\naudit_log /abs/audit.log\n"
    "access_log stdout\nmetrics_listen 127.0.0.1:9090\ninitial_color green\npreview_listen 127.0.0.1:8081\n"
    "notify exec hooks/notify.sh\nnotify webhook http://127.0.0.1:9000/hook\n",
    MINIMAL + "timeouts {\n    connect 2s\n    client_header 10s\n    client_body 30s\n    client_idle 1m\n    upstream_header 30s\n"
    "    upstream_idle 1h\n    drain 0s\n}\nlimits {\n    max_connections 10000\n    max_header_bytes 16k\n    max_headers 100\n"
    "    max_uri_bytes 8k\n    max_body 10m\n    upstream_idle_per_server 64\n}\nhealth {\n    interval 1s\n    timeout 500ms\n"
    "    rise 2\n    fall 3\n    ready_after 30s\n    min_healthy 1\n}\n",
    MINIMAL + "gate {\n window 5m\n max_5xx_rate 0.5%\n max_p95_ratio 1.25\n max_shadow_diff_rate 0.01\n min_requests 500\n watch 10m\n}\n"
    "watch {\n rollback_if error_rate > 1%\n rollback_if burn_rate > 14.4 budget 0.1% window 1h min_errors 5\n min_requests 50\n"
    " false_alarm 0.5%\n}\n",
    "listen 127.0.0.1:1\napp a {\n host *\n sticky cookie c max_age 24h\n mirror 5\n mirror_methods GET HEAD\n mirror_max_body 64k\n"
    " mirror_max_inflight 10\n mirror_noise on\n mirror_ignore_headers Date X-Request-Id\n pin header X-Tenant pilot-1,pilot-2 green\n"
    " pin cookie beta yes blue\n blue 127.0.0.1:2 127.0.0.1:4\n green 127.0.0.1:3\n}\n"
    "app b {\n host b.example\n path /b/\n sticky header X-User\n blue 127.0.0.1:5\n green 127.0.0.1:6\n}\n",
    "listen 127.0.0.1:8443 tls\nlisten 127.0.0.1:8080\ntls {\n certificate a.pem a.key\n certificate /etc/b.pem /etc/b.key\n"
    " default_certificate A.example\n min_version 1.3\n ciphers ECDHE+AESGCM\n session_tickets off\n session_cache 1000\n"
    " handshake_timeout 5s\n redirect_http listen 127.0.0.1:80 [::1]:80\n}\n" + APPS,
    MINIMAL + plan_file("canary-to-full.conf"),
    MINIMAL + plan_file("canary-by-tenant.conf"),
    MINIMAL + plan_file("gate-then-switch.conf"),
    MINIMAL + "plans p.conf\nplans dir\n",
    MINIMAL + "plans bad.conf\n",
    MINIMAL + "plans notplan.conf\nplans empty.conf\nplans missing.conf\n",
    MINIMAL + "plan p {\n step weight 50 pin header X-T a,b mirror 10% hold 15m\n step weight 100\n pause_if p95 > 500ms\n"
    " pause_if p95_regression 1.5 slack 50ms\n rollback_if error_regression min_excess 1%\n rollback_if shadow_diff_rate > 2%\n"
    " rollback_if health_failed\n min_requests 300\n false_alarm 1%\n watch 5m\n}\n",
    "listen 127.0.0.1:8080\n# no apps\n",
    APPS,
    "listen 127.0.0.1:8080\napp a {\n host *\n blue 127.0.0.1:1\n",
    "listen 127.0.0.1:8080\napp a {\n host *\n}\n}\n",
    "listen 127.0.0.1:8080\n{\napp a { host *\n",
    "listen 127.0.0.1:8080\nlisten 127.0.0.1:8080\n" + APPS,
    "listen 1.2.3.4:80\nbogus\n",
    "listen 127.0.0.1:8080\nworkers 0\n" + APPS,
    "listen 127.0.0.1:8080\nlimits {\n max_header_bytes 1k\n max_uri_bytes 2k\n}\n" + APPS,
    "listen 127.0.0.1:8080\ntimeouts {\n connect 30\n}\n" + APPS,
    "listen 127.0.0.1:8080\napp a {\n host bad_host-.example\n blue 127.0.0.1:99999\n green ::1:80\n}\n",
    "listen 127.0.0.1:8080\napp a {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\napp b {\n host *\n blue 127.0.0.1:1\n green 127.0.0.1:2\n}\n",
]

admin = [
    "help", "status", "health", "reload", "reopen", "pins",
    "switch green", "switch blue watch 5m force reason deploy 42", "rollback", "rollback force reason bad deploy",
    "weight green 10", "weight blue 0.25 app api force reason pilot wave", "weight green 100.00",
    "pin api header X-Tenant pilot-1,pilot-2 green reason wave 1", "pin * cookie beta yes blue",
    "unpin api", "unpin * header X-Tenant pilot-1 reason done", "unpin api cookie beta",
    "mirror 5", "mirror 12.5 app api reason compare",
    "release start canary-to-full", "release start p to green force reason go", "release status", "release report",
    "release pause reason look", "release resume", "release promote", "release abort reason stop",
    "drain api 127.0.0.1:8091", "undrain api [::1]:8091", "verify blue", "stats", "stats 5m", "stats total",
    "overview", "overview 300", "history", "history 1000",
    "", "   ", "bogus command", "SWITCH\tgreen", "weight green 101", "weight green 10.001", "pin api header X-Tenant a,a green",
    "pin api header X-Tenant a green force", "unpin api header X a b", "overview 301", "history 0", "switch green watch 0s",
    "release start", "release begin x", "stats 2m", "drain api",
    "upgrade", "upgrade binary /usr/local/bin/cutover", "upgrade binary cutover", "upgrade /usr/bin/cutover",
    "undrain web \t\u200d10.0.0.1:80",
]


def write(harness, seeds):
    folder = os.path.join(HERE, "corpus", harness)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.startswith("seed-"):
            os.remove(os.path.join(folder, name))
    for data in seeds:
        digest = hashlib.sha1(data).hexdigest()[:12]
        with open(os.path.join(folder, "seed-" + digest), "wb") as f:
            f.write(data)


def framed(cases):
    out = []
    for index, (control, text) in enumerate(cases):
        message = text.encode("latin-1")
        # Split points that cut somewhere inside the first line and the head.
        out.append(bytes([(7 * index + 3) % 256, (31 * index + 17) % 256, control]) + message)
    return out


write("request_head", framed(requests))
write("response_head", framed(responses))
write("chunked", framed(bodies))
write("config", [text.encode() for text in configs])
write("admin", [line.encode() for line in admin])
print("seeds: request_head %d, response_head %d, chunked %d, config %d, admin %d"
      % (len(requests), len(responses), len(bodies), len(configs), len(admin)), file=sys.stderr)
