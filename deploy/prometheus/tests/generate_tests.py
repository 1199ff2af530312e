#!/usr/bin/env python3
"""Writes ipm-stream.test.yml, the promtool unit tests of ../ipm-stream.rules.yml.

The per-creative gauges in the tests are not typed in by hand: they come from a model of the
service that counts minute-by-minute traffic into the default windows (5m, 1h, 24h), publishes
each window a little after it ends (as the watermark trails wall-clock time), and computes IPM
and its Wilson interval exactly as src/ipm.rs does. So "a 40% drop" below is a drop in the
traffic, and the test checks when the alert fires on what the service would export.

    python3 deploy/prometheus/tests/generate_tests.py          # rewrite the test file
    python3 deploy/prometheus/tests/generate_tests.py --check  # fail if it is out of date

The model also checks its own premises (that the noisy creatives really would page without
their guard, that the drop is detected within the stated delay) and fails if they stop holding
when thresholds change.
"""

import argparse
import math
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
TEST_FILE = HERE / "ipm-stream.test.yml"

Z = 1.959963984540054
JOB = "ipm-stream"
INSTANCE = "10.0.3.17:9898"

# Thresholds of the rules file, restated so the model can check its premises.
DROP_FACTOR = 0.7
MIN_IMPRESSIONS_1H = 5000
MIN_IMPRESSIONS_24H = 50000
FOR_DROP = 10
# The stated delay of the drop alert for a 40% step drop at 100k impressions an hour (README).
STATED_DROP_DELAY = 75

# (name, size in minutes, slide in minutes). The 5m window slides every 10 s in the service;
# at the one-minute resolution of the tests it is published every minute.
WINDOWS = [("5m", 5, 1), ("1h", 60, 1), ("24h", 1440, 15)]
# Minutes of steady traffic before the tests start, so the 24h window is full at t=0.
HISTORY = 1500


def wilson(installs, impressions):
    """IPM, lower and upper bound per mille, as src/ipm.rs computes them."""
    if impressions == 0:
        return (math.nan, math.nan, math.nan)
    trials = float(impressions)
    successes = float(min(installs, impressions))
    p = successes / trials
    z2 = Z * Z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2.0 * trials)) / denominator
    spread = Z / denominator * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials))
    low = 0.0 if successes == 0.0 else centre - spread
    high = 1.0 if successes == trials else centre + spread
    return (installs * 1000.0 / trials, low * 1000.0, high * 1000.0)


class Creative:
    """Minute-by-minute traffic of one (campaign, creative) and the gauges it leads to."""

    def __init__(self, campaign, creative, impressions_per_minute, ipm_at, minutes):
        self.campaign, self.creative = campaign, creative
        self.impressions = {}
        self.installs = {}
        expected = 0.0
        counted = 0
        for minute in range(-HISTORY, minutes + 1):
            rate = impressions_per_minute
            self.impressions[minute] = rate
            # Installs are whole events: round the running expectation, so that a rate of 0.5
            # a minute gives one install every other minute rather than none.
            expected += rate * ipm_at(minute) / 1000.0
            self.installs[minute] = round(expected) - counted
            counted += self.installs[minute]
        # Running totals, so that a window is a difference of two of them.
        self.cumulative = {}
        totals = (0, 0)
        for minute in range(-HISTORY, minutes + 1):
            self.cumulative[minute] = totals
            totals = (totals[0] + self.impressions[minute], totals[1] + self.installs[minute])

    def window(self, name, t):
        """(impressions, installs) of window `name` as exported at minute t."""
        _, size, slide = next(w for w in WINDOWS if w[0] == name)
        # Published once the watermark (30 s behind the newest events) passes the window end.
        end = math.floor((t - 0.5) / slide) * slide
        (imps_end, inst_end), (imps_start, inst_start) = self.cumulative[end], self.cumulative[end - size]
        return (imps_end - imps_start, inst_end - inst_start)

    def gauges(self, name, t):
        impressions, installs = self.window(name, t)
        ipm, low, high = wilson(installs, impressions)
        return {
            "ipm_stream_ipm": ipm,
            "ipm_stream_ipm_lower": low,
            "ipm_stream_ipm_upper": high,
            "ipm_stream_window_impressions": float(impressions),
            "ipm_stream_window_installs": float(installs),
        }

    def series(self, minutes):
        out = []
        for name, _, _ in WINDOWS:
            samples = [self.gauges(name, t) for t in range(minutes + 1)]
            for metric in samples[0]:
                labels = (f'campaign_id="{self.campaign}",creative_id="{self.creative}",'
                          f'instance="{INSTANCE}",job="{JOB}",window="{name}"')
                out.append((f"{metric}{{{labels}}}", [s[metric] for s in samples]))
        return out


def drop_condition(creatives, t):
    """Whether the creative drop alert's expression holds for the first creative at t."""
    c = creatives[0]
    upper = c.gauges("1h", t)["ipm_stream_ipm_upper"]
    baseline = c.gauges("24h", t)["ipm_stream_ipm"]
    return (upper / baseline < DROP_FACTOR
            and c.window("1h", t)[0] >= MIN_IMPRESSIONS_1H
            and c.window("24h", t)[0] >= MIN_IMPRESSIONS_24H)


def campaign_gauges(creatives, name, t):
    impressions = sum(c.window(name, t)[0] for c in creatives)
    installs = sum(c.window(name, t)[1] for c in creatives)
    return impressions, installs, wilson(installs, impressions)


def fmt(value):
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def values(samples):
    """promtool's series notation, with runs of one value written as `v+0xN`."""
    parts = []
    i = 0
    while i < len(samples):
        j = i
        while j + 1 < len(samples) and fmt(samples[j + 1]) == fmt(samples[i]):
            j += 1
        if j > i:
            parts.append(f"{fmt(samples[i])}+0x{j - i}")
        else:
            parts.append(fmt(samples[i]))
        i = j + 1
    return " ".join(parts)


def go_percentage(value):
    """Prometheus's humanizePercentage: %.4g of value * 100, then a percent sign."""
    text = f"{value * 100:.4g}"
    return f"{text}%"


def go_duration(seconds):
    """Prometheus's humanizeDuration for whole seconds of a minute or more."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s"


def yaml_str(text):
    return "'" + text.replace("'", "''") + "'"


class Out:
    def __init__(self):
        self.lines = []

    def __call__(self, text=""):
        self.lines.append(text)

    def series(self, name, samples):
        self(f"      - series: {yaml_str(name)}")
        self(f"        values: {yaml_str(values(samples))}")

    def alert(self, t, name, alerts):
        self(f"      - eval_time: {t}m")
        self(f"        alertname: {name}")
        if not alerts:
            self("        exp_alerts: []")
            return
        self("        exp_alerts:")
        for labels, annotations in alerts:
            self("          - exp_labels:")
            for key, value in labels.items():
                self(f"              {key}: {yaml_str(value)}")
            if annotations:
                self("            exp_annotations:")
                for key, value in annotations.items():
                    self(f"              {key}: {yaml_str(value)}")


def drop_annotations(c, t):
    upper = c.gauges("1h", t)["ipm_stream_ipm_upper"]
    ipm_1h = c.gauges("1h", t)["ipm_stream_ipm"]
    ipm_24h = c.gauges("24h", t)["ipm_stream_ipm"]
    impressions = c.window("1h", t)[0]
    return {
        "summary": f"IPM of creative {c.creative} (campaign {c.campaign}) dropped against "
                   "its 24h baseline",
        "description": f"In the last hour creative {c.creative} of campaign {c.campaign} "
                       f"converted at {ipm_1h:.2f} installs per mille over {impressions:.0f} "
                       f"impressions, against {ipm_24h:.2f} over 24h. Even the upper end of its "
                       f"95% interval is only {go_percentage(upper / ipm_24h)} of the baseline "
                       "(alert below 70%).",
        "runbook_url": "README.md#ipmstreamcreativeipmdrop",
    }


def scenario_drop(out):
    minutes = 130
    drop_at = 30

    def dropping(minute):
        return 10.0 if minute < drop_at else 6.0

    big = Creative("c-big", "cr-drop", 1700, dropping, minutes)
    steady = Creative("c-big", "cr-steady", 1700, lambda m: 10.0, minutes)
    # The first evaluation at which the expression holds, and the alert fires FOR_DROP later.
    holds = next(t for t in range(minutes + 1) if drop_condition([big], t))
    fires = holds + FOR_DROP
    if fires - drop_at > STATED_DROP_DELAY:
        sys.exit(f"a 40% drop at 100k/h now fires after {fires - drop_at} min, more than the "
                 f"stated {STATED_DROP_DELAY}; update STATED_DROP_DELAY and the README")
    for t in range(fires, minutes + 1):
        if not drop_condition([big], t):
            sys.exit(f"the drop condition stops holding at minute {t}")
    _, _, (campaign_ipm, _, campaign_upper) = campaign_gauges([big, steady], "1h", minutes)
    campaign_baseline = campaign_gauges([big, steady], "24h", minutes)[2][0]
    if campaign_upper / campaign_baseline < DROP_FACTOR:
        sys.exit("the campaign of the dropping creative was meant to stay above the threshold")

    out("  - name: a 40% IPM drop on a creative with 100k impressions an hour pages within "
        f"{STATED_DROP_DELAY} minutes; its steady sibling and its campaign do not")
    out("    interval: 1m")
    out("    # cr-drop converts at 10 per mille until minute 30, then at 6; cr-steady stays at 10.")
    out(f"    # The expression first holds at minute {holds} (the 1h window has mostly refilled")
    out(f"    # with the new rate), and the alert fires {FOR_DROP} minutes later, at {fires}.")
    out("    input_series:")
    for creative in (big, steady):
        for name, samples in creative.series(minutes):
            out.series(name, samples)
    out("    alert_rule_test:")
    out.alert(drop_at + 20, "IpmStreamCreativeIpmDrop", [])
    out.alert(fires - 1, "IpmStreamCreativeIpmDrop", [])
    labels = {"severity": "warning", "campaign_id": "c-big", "creative_id": "cr-drop"}
    out.alert(fires, "IpmStreamCreativeIpmDrop", [(labels, drop_annotations(big, fires))])
    out.alert(minutes, "IpmStreamCreativeIpmDrop", [(labels, drop_annotations(big, minutes))])
    out.alert(minutes, "IpmStreamCampaignIpmDrop", [])
    out()
    return holds, fires


def scenario_noise(out):
    minutes = 150
    dip = range(30, 90)

    def dipping(low):
        return lambda minute: low if minute in dip else 10.0

    # 8000 impressions an hour: 80 installs expected, 55 seen (2.8 sigma), a point IPM of 6.9.
    mid = Creative("c-mid", "cr-mid", 8000 / 60, dipping(6.9), minutes)
    # 3000 impressions an hour: 30 installs expected, 10 seen.
    tiny = Creative("c-tiny", "cr-tiny", 50, dipping(3.3), minutes)
    worst = {}
    for c in (mid, tiny):
        worst[c.creative] = min(
            (c.gauges("1h", t)["ipm_stream_ipm"] / c.gauges("24h", t)["ipm_stream_ipm"],
             c.gauges("1h", t)["ipm_stream_ipm_upper"] / c.gauges("24h", t)["ipm_stream_ipm"])
            for t in range(minutes + 1))
    # Premises: both point values fall under the threshold; for cr-mid only the interval keeps
    # it quiet, for cr-tiny even the interval is under it and only the volume guard helps.
    if not (worst["cr-mid"][0] < DROP_FACTOR <= min(
            mid.gauges("1h", t)["ipm_stream_ipm_upper"] / mid.gauges("24h", t)["ipm_stream_ipm"]
            for t in range(minutes + 1))):
        sys.exit(f"cr-mid no longer demonstrates the interval guard: {worst['cr-mid']}")
    if not (worst["cr-tiny"][1] < DROP_FACTOR and tiny.window("1h", 90)[0] < MIN_IMPRESSIONS_1H):
        sys.exit(f"cr-tiny no longer demonstrates the volume guard: {worst['cr-tiny']}")

    out("  - name: creatives whose IPM dips by chance do not page")
    out("    interval: 1m")
    out("    # cr-mid (8000 impressions an hour) dips from 10 to 6.9 per mille: under 70% of its")
    out("    # baseline as a point value, but the upper bound of its interval stays above, so the")
    out("    # interval guard holds it back. cr-tiny (3000 an hour) dips to 3.3: even its upper")
    out("    # bound is under the threshold, and the minimum-volume guard holds it back.")
    out("    input_series:")
    for creative in (mid, tiny):
        for name, samples in creative.series(minutes):
            out.series(name, samples)
    out("    alert_rule_test:")
    for t in (60, 90, 100, 110, 120, minutes):
        out.alert(t, "IpmStreamCreativeIpmDrop", [])
        out.alert(t, "IpmStreamCampaignIpmDrop", [])
    out()


def scenario_campaign_drop(out):
    minutes = 130
    drop_at = 30
    creatives = [
        Creative("c-wide", f"cr-{i}", 600, lambda m: 10.0 if m < drop_at else 6.0, minutes)
        for i in range(3)
    ]

    def holds(t):
        impressions_1h, _, (_, _, upper) = campaign_gauges(creatives, "1h", t)
        impressions_24h, _, (baseline, _, _) = campaign_gauges(creatives, "24h", t)
        return (upper / baseline < DROP_FACTOR and impressions_1h >= MIN_IMPRESSIONS_1H
                and impressions_24h >= MIN_IMPRESSIONS_24H)

    first = next(t for t in range(minutes + 1) if holds(t))
    fires = first + FOR_DROP
    impressions_1h, _, (ipm_1h, _, upper) = campaign_gauges(creatives, "1h", fires)
    baseline = campaign_gauges(creatives, "24h", fires)[2][0]
    out("  - name: a 40% drop on every creative of a campaign pages for the campaign")
    out("    interval: 1m")
    out("    # Three creatives of 36k impressions an hour each drop from 10 to 6 per mille at")
    out(f"    # minute 30; the campaign's own interval (from the recording rules) is narrower than")
    out(f"    # theirs, so the campaign alert fires at minute {fires}.")
    out("    input_series:")
    for creative in creatives:
        for name, samples in creative.series(minutes):
            out.series(name, samples)
    out("    alert_rule_test:")
    out.alert(fires - 1, "IpmStreamCampaignIpmDrop", [])
    annotations = {
        "summary": "IPM of campaign c-wide dropped against its 24h baseline",
        "description": f"In the last hour campaign c-wide converted at {ipm_1h:.2f} installs per "
                       f"mille over {impressions_1h:.0f} impressions, against {baseline:.2f} over "
                       f"24h. Even the upper end of its 95% interval is only "
                       f"{go_percentage(upper / baseline)} of the baseline (alert below 70%).",
        "runbook_url": "README.md#ipmstreamcampaignipmdrop",
    }
    out.alert(fires, "IpmStreamCampaignIpmDrop",
              [({"severity": "warning", "campaign_id": "c-wide"}, annotations)])
    out()


def scenario_installs_stopped(out):
    minutes = 90
    stop = range(30, 70)
    broken = Creative("c-broken", "cr-a", 500, lambda m: 0.0 if m in stop else 10.0, minutes)
    # Zero installs in the 5m window from the first window inside the stop, then FOR 10m.
    zero = [t for t in range(minutes + 1) if broken.window("5m", t)[1] == 0]
    first, last = zero[0], zero[-1]
    fires, resolved = first + 10, last + 1

    def annotations(t):
        impressions = broken.window("5m", t)[0]
        _, _, (baseline, _, _) = campaign_gauges([broken], "24h", t)
        expected = impressions * baseline / 1000
        return {
            "summary": "Campaign c-broken gets impressions but no installs",
            "description": f"Campaign c-broken had {impressions:.0f} impressions and no install "
                           f"in the last 5 minutes, where its 24h IPM of {baseline:.2f} predicts "
                           f"{expected:.1f}. A broken store page, tracking link or attribution "
                           "feed is likely.",
            "runbook_url": "README.md#ipmstreaminstallsstopped",
        }
    out("  - name: zero installs while impressions flow page within 20 minutes and resolve "
        "when installs return")
    out("    interval: 1m")
    out("    # 500 impressions a minute at 10 per mille; installs stop from minute 30 to 70 (a")
    out(f"    # broken tracking link). The 5m window is empty of installs from minute {first} to")
    out(f"    # {last}; the alert fires at {fires} and is gone at {resolved}.")
    out("    input_series:")
    for name, samples in broken.series(minutes):
        out.series(name, samples)
    out("    alert_rule_test:")
    out.alert(fires - 1, "IpmStreamInstallsStopped", [])
    labels = {"severity": "critical", "campaign_id": "c-broken"}
    out.alert(fires, "IpmStreamInstallsStopped", [(labels, annotations(fires))])
    out.alert(last, "IpmStreamInstallsStopped", [(labels, annotations(last))])
    out.alert(resolved, "IpmStreamInstallsStopped", [])
    out()


def scenario_no_output(out):
    minutes = 60
    stall = range(20, 40)
    busy = "10.0.3.17:9898"
    idle = "10.0.3.18:9898"
    last_output = []
    for t in range(minutes + 1):
        last_output.append(last_output[-1] if t in stall else t * 60 - 5.0)
    last_output[0] = 0.0
    stale_from = next(t for t in range(minutes + 1) if t * 60 - last_output[t] > 300)
    fires = stale_from + 2
    resolved = stall.stop
    value = fires * 60 - last_output[fires]

    def labels(instance):
        return f'instance="{instance}",job="{JOB}"'

    out("  - name: no fresh output while input flows pages after 7 minutes and resolves; an "
        "instance without input stays quiet")
    out("    interval: 1m")
    out(f"    # {busy} stops publishing at minute 20 while it keeps counting input, and resumes at")
    out(f"    # 40. {idle} published once, at minute 5, and has had no input since.")
    out("    input_series:")
    out.series(f"ipm_stream_last_output_timestamp_seconds{{{labels(busy)}}}", last_output)
    out.series(f"process_start_time_seconds{{{labels(busy)}}}", [0.0] * (minutes + 1))
    out.series('ipm_stream_events_consumed_total{outcome="counted",topic="ad.impressions",'
               f'{labels(busy)}}}', [t * 6000.0 for t in range(minutes + 1)])
    out.series('ipm_stream_events_consumed_total{outcome="replayed",topic="ad.impressions",'
               f'{labels(busy)}}}', [0.0] * (minutes + 1))
    out.series(f'ipm_stream_consumer_lag_messages{{partition="0",topic="ad.impressions",'
               f'{labels(busy)}}}', [0.0] * (minutes + 1))
    # The broker refuses output while it is stalled: 50 errors a minute.
    out.series(f"ipm_stream_produce_errors_total{{{labels(busy)}}}",
               [50.0 * min(max(0, t - stall.start), len(stall)) for t in range(minutes + 1)])
    out.series(f"ipm_stream_ready{{{labels(busy)}}}",
               [0.0 if t in stall else 1.0 for t in range(minutes + 1)])
    out.series(f"ipm_stream_last_output_timestamp_seconds{{{labels(idle)}}}",
               [0.0] * 5 + [300.0] * (minutes - 4))
    out.series(f"process_start_time_seconds{{{labels(idle)}}}", [0.0] * (minutes + 1))
    out.series('ipm_stream_events_consumed_total{outcome="counted",topic="ad.impressions",'
               f'{labels(idle)}}}', [1000.0] * (minutes + 1))
    out.series(f'ipm_stream_consumer_lag_messages{{partition="1",topic="ad.impressions",'
               f'{labels(idle)}}}', [0.0] * (minutes + 1))
    out("    alert_rule_test:")
    out.alert(fires - 1, "IpmStreamNoFreshOutput", [])
    errors = 50 * (fires - stall.start) - 50 * max(0, fires - 10 - stall.start)
    annotations = {
        "summary": f"ipm-stream instance {busy} has published nothing for {go_duration(value)}",
        "description": f"{busy} last had output records acknowledged {go_duration(value)} ago "
                       "while input keeps arriving, so bidders are reading stale IPM. Produce "
                       f"errors in the last 10 minutes: {errors}; ready: 0.",
        "runbook_url": "README.md#ipmstreamnofreshoutput",
    }
    out.alert(fires, "IpmStreamNoFreshOutput",
              [({"severity": "critical", "instance": busy, "job": JOB}, annotations)])
    out.alert(resolved, "IpmStreamNoFreshOutput", [])
    out.alert(minutes, "IpmStreamNoFreshOutput", [])
    out()


def scenario_lag(out):
    minutes = 50
    grow = [t * 5000.0 for t in range(minutes + 1)]
    # A burst on the installs topic that is being worked off: large, but falling.
    shrink = [max(0.0, 400000.0 - t * 8000.0) for t in range(minutes + 1)]
    above = next(t for t in range(minutes + 1) if grow[t] > 100000)
    fires = above + 15
    out("  - name: consumer lag that keeps growing pages; a backlog being worked off does not")
    out("    interval: 1m")
    out("    input_series:")
    out.series(f'ipm_stream_consumer_lag_messages{{instance="{INSTANCE}",job="{JOB}",'
               'partition="0",topic="ad.impressions"}', grow)
    out.series(f'ipm_stream_consumer_lag_messages{{instance="{INSTANCE}",job="{JOB}",'
               'partition="0",topic="ad.installs"}', shrink)
    out.series(f'ipm_stream_watermark_delay_seconds{{instance="{INSTANCE}",job="{JOB}"}}',
               [30.0 + 60 * t for t in range(minutes + 1)])
    out("    alert_rule_test:")
    out.alert(fires - 1, "IpmStreamConsumerLagGrowing", [])
    annotations = {
        "summary": "ipm-stream is falling behind on ad.impressions",
        "description": f"{grow[fires]:.0f} messages of ad.impressions are waiting to be read and "
                       f"the backlog grew by {grow[fires] - grow[fires - 15]:.0f} in the last 15 "
                       f"minutes. Watermark delay: {go_duration(30 + 60 * fires)}.",
        "runbook_url": "README.md#ipmstreamconsumerlaggrowing",
    }
    out.alert(fires, "IpmStreamConsumerLagGrowing",
              [({"severity": "warning", "topic": "ad.impressions"}, annotations)])
    out()


def scenario_rejections(out):
    minutes = 30
    out("  - name: more than 1% undecodable messages on a topic pages; a trickle does not")
    out("    interval: 1m")
    out("    # ad.installs: 100 rejected of 5000 read a minute (2%); ad.impressions: 0.1%.")
    out("    input_series:")
    common = f'instance="{INSTANCE}",job="{JOB}"'
    for topic, rejected, total in (("ad.installs", 100, 5000), ("ad.impressions", 50, 50000)):
        out.series(f'ipm_stream_events_rejected_total{{{common},reason="not_json",'
                   f'topic="{topic}"}}', [float(t * rejected) for t in range(minutes + 1)])
        out.series(f'ipm_stream_events_rejected_total{{{common},reason="missing_time",'
                   f'topic="{topic}"}}', [float(t) for t in range(minutes + 1)])
        # Refused messages go to the dead-letter topic (on_error = "dead_letter").
        out.series(f'ipm_stream_dead_letters_total{{{common},reason="not_json",'
                   f'topic="{topic}"}}', [float(t * rejected) for t in range(minutes + 1)])
        out.series(f'ipm_stream_dead_letters_total{{{common},reason="missing_time",'
                   f'topic="{topic}"}}', [float(t) for t in range(minutes + 1)])
        # Every rejected message is also counted as consumed with outcome "rejected".
        out.series(f'ipm_stream_events_consumed_total{{{common},outcome="counted",'
                   f'topic="{topic}"}}',
                   [float(t * (total - rejected - 1)) for t in range(minutes + 1)])
        out.series(f'ipm_stream_events_consumed_total{{{common},outcome="rejected",'
                   f'topic="{topic}"}}', [float(t * (rejected + 1)) for t in range(minutes + 1)])
    out("    alert_rule_test:")
    out.alert(10, "IpmStreamRejectionRateHigh", [])
    share = 101 / 5000
    annotations = {
        "summary": f"{go_percentage(share)} of the messages on ad.installs are refused",
        "description": f"{go_percentage(share)} of the messages read from ad.installs in the last "
                       "10 minutes were refused and not counted (alert above 1%), so IPM is "
                       "computed from part of the traffic. Top reason: not_json; dead-lettered: "
                       f"{101 / 60:.1f} per second.",
        "runbook_url": "README.md#ipmstreamrejectionratehigh",
    }
    out.alert(15, "IpmStreamRejectionRateHigh",
              [({"severity": "warning", "topic": "ad.installs"}, annotations)])
    out()


def scenario_down(out):
    out("  - name: a target that stops answering pages after 5 minutes and resolves when it is back")
    out("    interval: 1m")
    out("    input_series:")
    out.series(f'up{{instance="{INSTANCE}",job="{JOB}"}}', [1.0] * 10 + [0.0] * 10 + [1.0] * 11)
    out.series(f'up{{instance="10.0.3.18:9898",job="{JOB}"}}', [1.0] * 31)
    out("    alert_rule_test:")
    out.alert(14, "IpmStreamProcessorDown", [])
    annotations = {
        "summary": f"ipm-stream instance {INSTANCE} is down",
        "description": f"Prometheus could not scrape {INSTANCE} for 5 minutes: live IPM is not "
                       "being published by it and its partitions wait for a rebalance.",
        "runbook_url": "README.md#ipmstreamprocessordown",
    }
    out.alert(15, "IpmStreamProcessorDown",
              [({"severity": "critical", "instance": INSTANCE, "job": JOB}, annotations)])
    out.alert(20, "IpmStreamProcessorDown", [])
    out()
    out("  - name: no ipm-stream target at all pages as down")
    out("    interval: 1m")
    out("    input_series:")
    out.series('up{instance="10.0.9.1:9100",job="node"}', [1.0] * 11)
    out("    alert_rule_test:")
    out.alert(4, "IpmStreamProcessorDown", [])
    annotations = {
        "summary": "ipm-stream is down",
        "description": "Prometheus could not scrape any ipm-stream target for 5 minutes: live "
                       "IPM is not being published by it and its partitions wait for a "
                       "rebalance.",
        "runbook_url": "README.md#ipmstreamprocessordown",
    }
    out.alert(5, "IpmStreamProcessorDown",
              [({"severity": "critical", "job": JOB}, annotations)])
    out()


def scenario_recording(out):
    out("  - name: campaign recording rules sum creatives once and reproduce the service's "
        "Wilson bounds")
    out("    interval: 1m")
    out("    # c-one has a single creative with 20 installs in 1000 impressions, so its campaign")
    out("    # bound must be the service's own value for it. c-two's creative cr-y is exposed by")
    out("    # two replicas at once (as during a rebalance) and must be counted once. c-over has")
    out("    # more installs than impressions: the interval tops out at 1000.")
    out("    input_series:")
    rows = [
        ("c-one", "cr-x", INSTANCE, 1000, 20),
        ("c-two", "cr-y", INSTANCE, 4000, 30),
        ("c-two", "cr-y", "10.0.3.18:9898", 4000, 30),
        ("c-two", "cr-z", "10.0.3.18:9898", 6000, 90),
        ("c-over", "cr-o", INSTANCE, 4, 9),
        ("c-none", "cr-n", INSTANCE, 0, 0),
    ]
    for campaign, creative, instance, impressions, installs in rows:
        labels = (f'campaign_id="{campaign}",creative_id="{creative}",instance="{instance}",'
                  f'job="{JOB}",window="1h"')
        out.series(f"ipm_stream_window_impressions{{{labels}}}", [float(impressions)] * 3)
        out.series(f"ipm_stream_window_installs{{{labels}}}", [float(installs)] * 3)
    out("    promql_expr_test:")
    expectations = [
        ("campaign_window:ipm_stream_window_impressions:sum",
         [("c-none", 0.0), ("c-one", 1000.0), ("c-over", 4.0), ("c-two", 10000.0)]),
        ("campaign_window:ipm_stream_ipm:ratio",
         [("c-one", 20.0), ("c-over", 2250.0), ("c-two", 12.0)]),
    ]
    for expr, samples in expectations:
        out(f"      - expr: {expr}")
        out("        eval_time: 2m")
        out("        exp_samples:")
        for campaign, value in samples:
            out(f"          - labels: '{expr}{{campaign_id=\"{campaign}\",window=\"1h\"}}'")
            out(f"            value: {fmt(value)}")
    # PromQL and Rust may round the last bit differently: equal within 1e-9 per mille.
    for campaign, value in (("c-one", wilson(20, 1000)[2]), ("c-over", 1000.0),
                            ("c-two", wilson(120, 10000)[2])):
        out("      - expr: abs(campaign_window:ipm_stream_ipm_upper:wilson95"
            f"{{campaign_id=\"{campaign}\"}} - {fmt(value)}) < bool 1e-9")
        out("        eval_time: 2m")
        out("        exp_samples:")
        out(f"          - labels: '{{campaign_id=\"{campaign}\",window=\"1h\"}}'")
        out("            value: 1")
    out()


def render():
    out = Out()
    out("# Generated by generate_tests.py from a model of the service's windows; edit that")
    out("# script, not this file. Run with: promtool test rules ipm-stream.test.yml")
    out()
    out("rule_files:")
    out("  - ../ipm-stream.rules.yml")
    out()
    out("evaluation_interval: 1m")
    out()
    out("tests:")
    scenario_drop(out)
    scenario_noise(out)
    scenario_campaign_drop(out)
    scenario_installs_stopped(out)
    scenario_no_output(out)
    scenario_lag(out)
    scenario_rejections(out)
    scenario_down(out)
    scenario_recording(out)
    return "\n".join(out.lines).rstrip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the test file differs from what would be written")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TEST_FILE.exists() or TEST_FILE.read_text() != text:
            sys.exit(f"{TEST_FILE} is out of date: run {pathlib.Path(__file__).name}")
        return
    TEST_FILE.write_text(text)


if __name__ == "__main__":
    main()
