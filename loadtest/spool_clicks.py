#!/usr/bin/env python3
"""Writes M click events as spooled batches for linkgate to replay on its next start, through the
same batcher code as live taps (a tap through the edge is always "now"): timestamps spread over the
last D days, five phones and apps, 200,000 visitors, 5% bots. Used by loadtest/analytics and
loadtest/console.

usage: spool_clicks.py CODES_FILE SPOOL_FILE CLICKS DAYS
CODES_FILE: one "code owner recipient" per line.
"""
import json, random, sys, time
codes = [l.split() for l in open(sys.argv[1])]
n, days = int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)
now = int(time.time())
uas = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2d) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 13; 2211133C Build/TKQ1.220905.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/110.0.5481.154 Mobile Safari/537.36 aweme_280300 JsSdk/1.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 12; HarmonyOS; NOH-AN00) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.4844.88 HuaweiBrowser/14.0.1.303 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
]
visitors = ["%032x" % rng.getrandbits(128) for _ in range(200000)]
with open(sys.argv[2], "w") as out:
    seq, left = 0, n
    while left:
        k = min(4096, left); left -= k; seq += 1
        out.write(json.dumps({"lg_batch": f"seed:{seq}", "events": k, "seqs": {}}) + "\n")
        for _ in range(k):
            code, owner, rcpt = rng.choice(codes)
            ts = now - rng.randrange(days * 86400)
            human = rng.random() >= 0.05
            e = {"id": "%032x" % rng.getrandbits(128), "type": "click",
                 "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)), "code": code,
                 "campaign_id": "perf", "owner_id": owner, "recipient_id": rcpt, "kind": "sms",
                 "synthetic": False, "click_id": "%s.%016x" % (code, rng.getrandbits(64)), "agent": "human" if human else "bot",
                 "bot": not human, "state": "active",
                 "user_agent": rng.choice(uas) if human else "curl/8.4.0", "ip_hash": rng.choice(visitors)}
            out.write(json.dumps(e, separators=(",", ":")) + "\n")
