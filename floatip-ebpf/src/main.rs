//! Entry points of the floatip data plane. Each is thin: it wraps the
//! context in a `Frame`, runs the side's translation and turns the verdict
//! into the program type's action.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::generated::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use floatip_common::outcome;
use floatip_ebpf::{
    forward,
    frame::{Tc, Xdp},
    maps::REDIRECT,
    stats::count,
    translate::{self, Verdict},
};

#[xdp]
pub fn floatip_xdp_ext(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let verdict = translate::external(&mut Xdp(&ctx), ifindex);
    xdp_action(&ctx, ifindex, verdict)
}

#[xdp]
pub fn floatip_xdp_int(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let verdict = translate::internal(&mut Xdp(&ctx));
    xdp_action(&ctx, ifindex, verdict)
}

#[classifier]
pub fn floatip_tc_ext(ctx: TcContext) -> i32 {
    let ifindex = tc_ifindex(&ctx);
    pull(&ctx);
    let verdict = translate::external(&mut Tc(&ctx), ifindex);
    tc_action(&ctx, ifindex, verdict)
}

#[classifier]
pub fn floatip_tc_int(ctx: TcContext) -> i32 {
    let ifindex = tc_ifindex(&ctx);
    pull(&ctx);
    let verdict = translate::internal(&mut Tc(&ctx));
    tc_action(&ctx, ifindex, verdict)
}

#[inline(always)]
fn xdp_action(ctx: &XdpContext, ifindex: u32, verdict: Result<Verdict, ()>) -> u32 {
    match verdict {
        Ok(Verdict::Pass) => {
            count(outcome::PASSED);
            xdp_action::XDP_PASS
        }
        // Malformed or unexpected (stacked tags, bad lengths): untouched, to the kernel.
        Err(()) => {
            count(outcome::ERRORS);
            xdp_action::XDP_PASS
        }
        Ok(Verdict::PassExpiring) => {
            count(outcome::PASSED_TO_KERNEL);
            xdp_action::XDP_PASS
        }
        Ok(Verdict::Drop) => xdp_action::XDP_DROP,
        // Redirected to its own NIC rather than XDP_TX: on veth, XDP_TX does
        // not wake the peer, so the reply would sit until other traffic came.
        Ok(Verdict::Reply) => REDIRECT.redirect(ifindex, 0).unwrap_or(xdp_action::XDP_TX),
        Ok(Verdict::Forward { l3, vlan }) => {
            // A tagged frame belongs to a VLAN device the kernel owns.
            let egress = if vlan {
                None
            } else {
                forward::prepare(&Xdp(ctx), ifindex, l3)
            };
            match egress.map(|e| REDIRECT.redirect(e, 0)) {
                Some(Ok(action)) => {
                    count(outcome::REDIRECTED);
                    action
                }
                _ => {
                    count(outcome::PASSED_TO_KERNEL);
                    xdp_action::XDP_PASS
                }
            }
        }
    }
}

#[inline(always)]
fn tc_action(ctx: &TcContext, ifindex: u32, verdict: Result<Verdict, ()>) -> i32 {
    match verdict {
        Ok(Verdict::Pass) => {
            count(outcome::PASSED);
            TC_ACT_OK as i32
        }
        Err(()) => {
            count(outcome::ERRORS);
            TC_ACT_OK as i32
        }
        Ok(Verdict::PassExpiring) => {
            count(outcome::PASSED_TO_KERNEL);
            TC_ACT_OK as i32
        }
        Ok(Verdict::Drop) => TC_ACT_SHOT as i32,
        Ok(Verdict::Reply) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Ok(Verdict::Forward { l3, vlan }) => {
            let egress = if vlan {
                None
            } else {
                forward::prepare(&Tc(ctx), ifindex, l3)
            };
            match egress {
                Some(e) => {
                    count(outcome::REDIRECTED);
                    unsafe { bpf_redirect(e, 0) as i32 }
                }
                None => {
                    count(outcome::PASSED_TO_KERNEL);
                    TC_ACT_OK as i32
                }
            }
        }
    }
}

#[inline(always)]
fn tc_ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Makes the headers (up to the deepest ICMP quote) directly readable.
#[inline(always)]
fn pull(ctx: &TcContext) {
    let want = core::cmp::min(ctx.len(), 192);
    let _ = ctx.pull_data(want);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
