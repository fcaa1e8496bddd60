"""Drives the dashboard (/ui/) in a real headless Chromium with Selenium, as an operator
would during a failover: the page must load without console errors and show every
member with the right leader; stopping the leader from the page must make its card show
stopped and another card become leader within seconds; its get/put form must work;
its remove button must show the safety check's answer before removing a follower.
Screenshots go to --artifacts.

Exit codes: 0 passed, 1 failed (the reason on stderr), 3 no browser to run (Selenium,
chromium or chromedriver missing): the caller decides whether that may be skipped.
"""
import argparse
import json
import os
import shutil
import sys
import time

CANNOT_RUN = 3


def fail(message):
    print("dashboard test failed: " + message, file=sys.stderr)
    sys.exit(1)


def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("selenium is not installed (PyPI: selenium)", file=sys.stderr)
        sys.exit(CANNOT_RUN)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        print("no chromium/chromedriver (Debian: chromium chromium-driver)", file=sys.stderr)
        sys.exit(CANNOT_RUN)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--window-size=1400,1000", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is given: Selenium must not try to download one (no internet).
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def wait_for(what, probe, within=15.0):
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as err:  # the page is redrawn twice a second: retry
            last = err
        time.sleep(0.1)
    fail("%s: not within %.0f s (last: %r)" % (what, within, last))


def roles(driver):
    cards = driver.find_elements("css selector", ".card[data-member]")
    return {card.get_attribute("data-member"): card.get_attribute("data-role") for card in cards}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the node serving the page")
    parser.add_argument("--members", required=True, help="comma-separated names")
    parser.add_argument("--leader", required=True)
    parser.add_argument("--artifacts", required=True)
    args = parser.parse_args()
    members = args.members.split(",")
    os.makedirs(args.artifacts, exist_ok=True)
    shot = lambda name: driver.save_screenshot(os.path.join(args.artifacts, name))

    driver = browser()
    report = {}
    try:
        started = time.monotonic()
        driver.get(args.url.rstrip("/") + "/ui/")
        if "distraft" not in driver.title:
            fail("unexpected title %r" % driver.title)
        shown = wait_for("every member shown with the leader",
                         lambda: (lambda r: r if sorted(r) == sorted(members)
                                  and r.get(args.leader) == "leader" else None)(roles(driver)))
        report["first_view_s"] = round(time.monotonic() - started, 2)
        report["roles_before"] = shown
        wait_for("the live link", lambda: driver.find_element("id", "link").text == "live")
        # Let the rates and the follower table fill in before the picture.
        time.sleep(2)
        shot("dashboard.png")

        # Failover from the page: stop the leader.
        stop = driver.find_element(
            "css selector", '.card[data-member="%s"] button[data-action="stop"]' % args.leader)
        stop.click()
        clicked = time.monotonic()
        after = wait_for("the old leader stopped and a new leader shown",
                         lambda: (lambda r: r if r.get(args.leader) == "stopped"
                                  and any(role == "leader" for role in r.values()) else None)(roles(driver)))
        report["failover_seen_s"] = round(time.monotonic() - clicked, 2)
        report["roles_after"] = after
        new_leader = [name for name, role in after.items() if role == "leader"][0]
        if new_leader == args.leader:
            fail("the stopped node is still shown as leader")
        time.sleep(1.5)
        shot("failover.png")

        # Start it again from the page: it rejoins as a follower.
        driver.find_element(
            "css selector", '.card[data-member="%s"] button[data-action="start"]' % args.leader).click()
        wait_for("the old leader back as a follower",
                 lambda: roles(driver).get(args.leader) == "follower")

        # Make it the leader again from the page (a leadership transfer).
        lead = wait_for("its make-leader button enabled", lambda: (lambda b: b if b.is_enabled() else None)(
            driver.find_element(
                "css selector", '.card[data-member="%s"] button[data-action="lead"]' % args.leader)))
        lead.click()
        clicked = time.monotonic()
        wait_for("the old leader leading again",
                 lambda: roles(driver).get(args.leader) == "leader")
        report["transfer_seen_s"] = round(time.monotonic() - clicked, 2)

        # The get/put form.
        driver.find_element("id", "kv-key").send_keys("from the browser")
        driver.find_element("id", "kv-value").send_keys("héllo ✓")
        driver.find_element("css selector", 'button[data-op="put"]').click()
        wait_for("the put answered", lambda: driver.find_element("id", "kv-result").text.startswith("200"))
        driver.find_element("css selector", 'button[data-op="get"]').click()
        wait_for("the get answered with the value",
                 lambda: "héllo ✓" in driver.find_element("id", "kv-result").text
                 and driver.find_element("id", "kv-result").text.startswith("200"))
        shot("form.png")

        # Remove a follower from the page: the safety check's answer is shown first
        # (a confirmation), then its card goes.
        # Not the node serving the page: a removed node hears of no later change.
        served_by = driver.find_element("id", "served-by").text.split()[-1]
        follower = [name for name, role in roles(driver).items()
                    if role == "follower" and name != served_by][0]
        driver.find_element(
            "css selector", '.card[data-member="%s"] button[data-action="remove"]' % follower).click()
        from selenium.webdriver.support.ui import WebDriverWait
        from selenium.webdriver.support import expected_conditions
        WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
        alert = driver.switch_to.alert
        question = alert.text
        if "Remove %s?" % follower not in question or "voters 3 → 2" not in question \
                or "Safe" not in question:
            fail("the removal's confirmation does not show the safety check: %r" % question)
        report["remove_question"] = question
        alert.accept()
        wait_for("the removal answered (%s)" % follower,
                 lambda: "removed" in driver.find_element("id", "kv-result").text
                 or driver.find_element("id", "kv-result").text)
        result = driver.find_element("id", "kv-result").text
        if "removed" not in result:
            fail("the removal failed: %r" % result)
        wait_for("the removed member's card gone", lambda: follower not in roles(driver))
        shot("removed.png")

        errors = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        if errors:
            fail("console errors: %s" % json.dumps(errors, ensure_ascii=False))
        report["console_errors"] = 0
        print(json.dumps(report))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
