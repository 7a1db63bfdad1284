//! kill -9 of `floatip agent` in the middle of a burst of API writes (associate, move,
//! disassociate over many floating IPs and ports): afterwards the restarted agent repairs
//! whatever the kill cut short at its first write, the maps then hold exactly the database's
//! pairs, and the restarted agent serves the state the database holds.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde_json::{Value, json};
use tests::{
    agent::{self, Client, in_netns},
    netns::{self, Lab},
};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const ADMIN: (&str, &str) = ("root", "pw");
const N: usize = 8;

/// (floating, fixed) of every associated floating IP, as the CLI reads the database.
fn db_pairs(lab: &Lab) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = lab
        .json(&["ip", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["floating_ip_address"].as_str()?.to_owned(),
                r["fixed_ip_address"].as_str()?.to_owned(),
            ))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn agent_killed_during_writes() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = agent::lab(NETPROBE, ADMIN, "203.0.113.10-203.0.113.30");
    let mut agent = agent::start(&lab, &[]).unwrap();

    let (fips, ports) = in_netns(&lab.gw, || {
        let c = Client::new();
        let nets = c
            .call("GET", "/v2.0/networks?router:external=false", ADMIN, None)
            .body;
        let internal = nets["networks"][0]["id"].as_str().unwrap().to_owned();
        let public = c
            .call("GET", "/v2.0/networks?router:external=true", ADMIN, None)
            .body["networks"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut fips = Vec::new();
        let mut ports = Vec::new();
        for i in 0..N {
            let port = json!({"port": {"network_id": internal, "fixed_ips": [{"ip_address": format!("10.0.0.{}", 100 + i)}]}});
            let r = c.call("POST", "/v2.0/ports", ADMIN, Some(&port));
            assert_eq!(r.status, 201, "{}", r.text);
            ports.push(r.body["port"]["id"].as_str().unwrap().to_owned());
            let r = c.call(
                "POST",
                "/v2.0/floatingips",
                ADMIN,
                Some(&json!({"floatingip": {"floating_network_id": public}})),
            );
            assert_eq!(r.status, 201, "{}", r.text);
            fips.push(r.body["floatingip"]["id"].as_str().unwrap().to_owned());
        }
        (fips, ports)
    });

    // The burst: each step puts floating IP i on port (i + round) % N, or takes it off; the
    // kill comes once 60 writes have been answered, while the next ones are in flight.
    let answered = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for worker in 0..2 {
            let (fips, ports, answered, gw) = (&fips, &ports, answered.clone(), lab.gw.clone());
            s.spawn(move || {
                in_netns(&gw, || {
                    let c = Client::new();
                    for step in 0..400 {
                        let i = (step * 2 + worker) % N;
                        let port = if step % 5 == 4 {
                            Value::Null
                        } else {
                            json!(ports[(i + step / N) % N])
                        };
                        let body = json!({"floatingip": {"port_id": port}}).to_string();
                        match c.raw(
                            "PUT",
                            &format!("/v2.0/floatingips/{}", fips[i]),
                            Some(ADMIN),
                            Some(&body),
                        ) {
                            // A conflict (the port already has another floating IP) is an answer too.
                            Ok(r) => assert!(matches!(r.status, 200 | 409), "{}", r.text),
                            Err(_) => return, // the agent is gone
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                })
            });
        }
        while answered.load(Ordering::SeqCst) < 60 {
            std::thread::yield_now();
        }
        agent.signal(libc::SIGKILL);
    });
    let killed = agent.finish(std::time::Duration::from_secs(10));
    assert!(
        killed.status.is_some_and(|s| !s.success()),
        "the agent should have died of SIGKILL: {killed}"
    );
    assert!(
        answered.load(Ordering::SeqCst) < 800,
        "the kill came after the burst ended"
    );

    // Restart; its first write (one more move) runs the drift check and repairs the maps.
    let _agent = agent::start(&lab, &[]).unwrap();
    in_netns(&lab.gw, || {
        let c = Client::new();
        let body = json!({"floatingip": {"port_id": null}});
        let r = c.call(
            "PUT",
            &format!("/v2.0/floatingips/{}", fips[0]),
            ADMIN,
            Some(&body),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        let db = db_pairs(&lab);
        assert_eq!(
            lab.nat_pairs(),
            db,
            "maps and database disagree after the restart's first write"
        );
        // The restarted agent serves what the database holds, each associated address ACTIVE.
        let listed = c.call("GET", "/v2.0/floatingips", ADMIN, None).body;
        let mut served: Vec<(String, String)> = listed["floatingips"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| {
                let fixed = f["fixed_ip_address"].as_str()?;
                assert_eq!(f["status"], "ACTIVE", "{f}");
                Some((
                    f["floating_ip_address"].as_str()?.to_owned(),
                    fixed.to_owned(),
                ))
            })
            .collect();
        served.sort();
        assert_eq!(served, db);
        // And it still writes: every floating IP off, then onto its own port.
        for f in &fips {
            let r = c.call(
                "PUT",
                &format!("/v2.0/floatingips/{f}"),
                ADMIN,
                Some(&json!({"floatingip": {"port_id": null}})),
            );
            assert_eq!(r.status, 200, "{}", r.text);
        }
        for (f, p) in fips.iter().zip(&ports) {
            let r = c.call(
                "PUT",
                &format!("/v2.0/floatingips/{f}"),
                ADMIN,
                Some(&json!({"floatingip": {"port_id": p}})),
            );
            assert_eq!(r.status, 200, "{}", r.text);
        }
        assert_eq!(lab.nat_pairs().len(), N);
        assert_eq!(lab.nat_pairs(), db_pairs(&lab));
    });
}
