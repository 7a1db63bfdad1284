"""openstacksdk against floatip agent, one step per run (the Rust test checks traffic between
steps). Usage: sdk_floating_ip.py CLOUD STEP [ARGS]; prints the floating IP as JSON.

  create NETWORK                 allocate from an external network
  set-port ADDRESS PORT_NAME     associate (or move) the floating IP with the named port
  unset ADDRESS                  disassociate
  show ADDRESS
  delete ADDRESS
"""
import json
import sys

import openstack


def show(ip):
    print(json.dumps({k: ip[k] for k in
                      ("id", "floating_ip_address", "fixed_ip_address", "port_id", "status")}))


def main():
    cloud, step, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    conn = openstack.connect(cloud=cloud)
    net = conn.network
    if step == "create":
        network = net.find_network(args[0], ignore_missing=False)
        show(net.create_ip(floating_network_id=network.id))
        return
    ip = net.find_ip(args[0], ignore_missing=False)
    if step == "set-port":
        port = net.find_port(args[1], ignore_missing=False)
        show(net.update_ip(ip, port_id=port.id))
    elif step == "unset":
        show(net.update_ip(ip, port_id=None))
    elif step == "show":
        show(net.get_ip(ip.id))
    elif step == "delete":
        net.delete_ip(ip, ignore_missing=False)
        print("{}")
    else:
        sys.exit(f"unknown step {step}")


if __name__ == "__main__":
    main()
