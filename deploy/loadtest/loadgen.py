#!/usr/bin/env python3
"""Synthetic impression/install traffic for sizing ipm-stream.

Produces JSON events with event times close to now, at a fixed rate, over a fixed number of
(campaign, creative) keys. Both topics are partitioned by the same hash of the key, so a key
always lands on the same partition number of both topics, as ipm-stream requires of real input.
Stops by itself after --duration seconds.
"""

import argparse
import json
import random
import sys
import time
import zlib

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--impressions-topic", default="ad.impressions")
    parser.add_argument("--installs-topic", default="ad.installs")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=int, default=10_000, help="impressions per second")
    parser.add_argument("--ipm", type=float, default=10.0, help="installs per 1000 impressions")
    parser.add_argument("--keys", type=int, default=10_000, help="(campaign, creative) keys")
    parser.add_argument("--creatives-per-campaign", type=int, default=20)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds")
    parser.add_argument("--create-topics", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


def create_topics(args):
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topics = [
        NewTopic(t, num_partitions=args.partitions, replication_factor=1)
        for t in (args.impressions_topic, args.installs_topic)
    ]
    topics.append(
        NewTopic("ipm.live", num_partitions=args.partitions, replication_factor=1,
                 config={"cleanup.policy": "compact"})
    )
    for topic, future in admin.create_topics(topics).items():
        try:
            future.result()
        except Exception as error:  # an existing topic is fine for a rerun
            print(f"create {topic}: {error}", file=sys.stderr)


def main():
    args = parse_args()
    if args.create_topics:
        create_topics(args)
    rng = random.Random(args.seed)
    keys = []
    for i in range(args.keys):
        campaign = f"c-{i // args.creatives_per_campaign}"
        creative = f"cr-{i}"
        partition = zlib.crc32(f"{campaign}/{creative}".encode()) % args.partitions
        keys.append((campaign, creative, partition))
    # Zipf-like skew: a few creatives get most of the traffic, as on a real ad network.
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(args.keys)]
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "compression.type": "lz4",
    })
    install_share = args.ipm / 1000.0
    sent = installs = 0
    started = time.monotonic()
    batch = max(1, args.rate // 100)  # produce in 10 ms slices
    next_slice = started
    event_id = 0
    while True:
        now = time.monotonic()
        if now - started >= args.duration:
            break
        if now < next_slice:
            time.sleep(next_slice - now)
        next_slice += 0.01
        picked = rng.choices(keys, weights=weights, k=batch)
        ts_ms = int(time.time() * 1000)
        for campaign, creative, partition in picked:
            event_id += 1
            event = {"event_id": f"i-{event_id}", "campaign_id": campaign,
                     "creative_id": creative, "ts": ts_ms - rng.randrange(2000)}
            produce(producer, args.impressions_topic, partition, event)
            sent += 1
            if rng.random() < install_share:
                event["event_id"] = f"n-{event_id}"
                produce(producer, args.installs_topic, partition, event)
                installs += 1
        producer.poll(0)
    producer.flush(60)
    elapsed = time.monotonic() - started
    print(json.dumps({"impressions": sent, "installs": installs, "seconds": round(elapsed, 1),
                      "impressions_per_second": round(sent / elapsed)}))


def produce(producer, topic, partition, event):
    payload = json.dumps(event, separators=(",", ":"))
    while True:
        try:
            producer.produce(topic, payload, partition=partition)
            return
        except BufferError:
            producer.poll(0.05)


if __name__ == "__main__":
    main()
