"""Real HTTP clients against labkit's servers: wrk and hey see only 2xx answers.

labkit's own load generator could share a blind spot with labkit's servers (say, both tolerating
a malformed response). A standard tool cannot. These tests need `wrk` or `hey` on the PATH
(.ci/run installs wrk from Debian's packages where it can) and are skipped, saying so, without.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from labkit.cluster import Cluster

WRK = shutil.which("wrk")
HEY = shutil.which("hey")


@pytest.fixture(scope="module")
def cluster():
    # A short heartbeat timeout makes workers report their counts every half second.
    with Cluster("labkit.demo:demo_app", workers=2, balance="os", heartbeat_timeout=2.0) as running:
        yield running


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install wrk)")
@pytest.mark.parametrize("path", ["/fast", "/sleep?ms=5", "/primes?n=2000"])
def test_wrk_gets_only_successful_answers_from_a_cluster(cluster, path):
    result = subprocess.run([WRK, "-t1", "-c8", "-d1s", cluster.url + path],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    requests = int(re.search(r"(\d+) requests in", result.stdout).group(1))
    assert requests > 0, result.stdout
    assert "Non-2xx or 3xx responses" not in result.stdout, result.stdout
    assert "Socket errors" not in result.stdout, result.stdout


@pytest.mark.skipif(HEY is None, reason="hey is not installed")
def test_hey_gets_only_200_answers_from_a_cluster(cluster):
    result = subprocess.run([HEY, "-n", "200", "-c", "8", cluster.url + "/fast"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", result.stdout))
    assert codes == {"200": "200"}, result.stdout


def settled_count(cluster) -> int:
    """The cluster's request count once workers have reported everything (it stops moving)."""
    previous, current = -1, cluster.stats().requests
    while current != previous:
        time.sleep(1.2)  # longer than the workers' report interval
        previous, current = current, cluster.stats().requests
    return current


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install wrk)")
def test_the_clusters_request_count_agrees_with_wrk(cluster):
    before = settled_count(cluster)
    result = subprocess.run([WRK, "-t1", "-c4", "-d1s", cluster.url + "/fast"], capture_output=True, text=True, timeout=60)
    served = int(re.search(r"(\d+) requests in", result.stdout).group(1))
    # wrk counts the responses it completed; it may have had a few more in flight when it
    # stopped, which the workers also served. Workers report their counts every so often.
    counted = settled_count(cluster) - before
    assert served <= counted <= served + 4 * 2, (served, counted)
