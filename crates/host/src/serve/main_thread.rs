//! The main thread's wait for its next hook (module docs of `serve`, "The main thread sleeps on
//! the ring, not in `recv`"): the hook-request lane first, the socket only when the service said it
//! sent something there (or after an idle timeout), and the hooks a plugin thread, reading the
//! socket, queued for it. Not here: the socket's leader/follower reading (`mod.rs`).

use std::sync::atomic::Ordering;

use plughost_sys::Ring;
use plughost_wire::decode_hook;

use plughost_sys::ChannelError;

use super::{host_log, Demux, Got, HookFrame, MainEvent, Received, Want};

impl Demux {
    /// The main thread: waits for the next hook; [`MainEvent::Hook`] leaves it in `frame`.
    pub fn next_hook(&self, frame: &mut HookFrame) -> MainEvent {
        if let Some(ring) = self.ring.get() {
            ring.main_waits(true);
            let event = self.next_hook_on_ring(ring, frame);
            ring.main_waits(false);
            return event;
        }
        match self.wait(Want::Main(frame)) {
            Got::Main(event) => event,
            Got::Reply(_) => MainEvent::Closed,
        }
    }

    /// [`Demux::next_hook`] with the ring: the hook-request lane first, then, when the socket word
    /// moved (or the last sleep timed out), the hooks a reader queued and the socket (read without
    /// blocking, only when no plugin thread is the reader), then a sleep on the hook word (module
    /// docs). A hook on the lane costs no lock and no `recvmsg`.
    fn next_hook_on_ring(&self, ring: &Ring, frame: &mut HookFrame) -> MainEvent {
        // Set when the last sleep timed out: look at the socket even if nobody announced a frame.
        let mut look = false;
        loop {
            // Read before looking: whatever comes after it moves the word, so the sleep below
            // returns at once.
            let seen = ring.main_word();
            match ring.take_hook(&mut frame.buf) {
                Ok(Some(len)) => {
                    frame.len = len;
                    if let Ok(Some(_)) = decode_hook(&frame.buf[..len]) {
                        return MainEvent::Hook;
                    }
                    // Only the host's own threads can have garbled it: the service wrote a hook.
                    host_log("a bad hook on the ring: closing");
                    self.close(&mut self.lock());
                    return MainEvent::Closed;
                }
                Ok(None) => {}
                Err(e) => {
                    host_log(&format!("closing: {e}"));
                    self.close(&mut self.lock());
                    return MainEvent::Closed;
                }
            }
            let socket = ring.main_socket_word();
            if std::mem::take(&mut look) || frame.socket_seen != Some(socket) {
                frame.socket_seen = Some(socket);
                if let Some(event) = self.look_at_socket(frame) {
                    return event;
                }
            }
            look = !ring.wait_main(seen, self.idle_check);
            if look {
                self.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The main thread's look at what the socket (and the demux) hold for it: a hook queued by a
    /// reader, a closed channel, or (when no plugin thread is the reader) the frames waiting on the
    /// socket. `None`: nothing for it.
    fn look_at_socket(&self, frame: &mut HookFrame) -> Option<MainEvent> {
        {
            let mut state = self.lock();
            if let Some(hook) = state.hooks.pop_front() {
                frame.set(&hook);
                return Some(MainEvent::Hook);
            }
            if state.closed {
                return Some(MainEvent::Closed);
            }
            if state.reader_active {
                // The reader routes what comes, and wakes this thread through the ring when it
                // leaves (`promote_one`).
                return None;
            }
            state.reader_active = true;
        }
        let hook = self.read_socket_now(frame);
        let mut state = self.lock();
        state.reader_active = false;
        self.promote_one(&mut state, true);
        if hook {
            Some(MainEvent::Hook)
        } else {
            state.closed.then_some(MainEvent::Closed)
        }
    }

    /// The main thread as the socket's reader, without blocking: routes every frame waiting there
    /// until the socket is empty, it closes, or a hook comes (left in `frame`: `true`).
    fn read_socket_now(&self, frame: &mut HookFrame) -> bool {
        loop {
            match self.try_recv_into(&mut frame.buf) {
                Ok(None) => return false,
                Ok(Some(Received::Hook(len))) => {
                    frame.len = len;
                    return true;
                }
                Ok(Some(Received::Msg(msg, fds))) => {
                    let mut state = self.lock();
                    self.route(&mut state, None, *msg, fds);
                    if state.closed {
                        return false;
                    }
                }
                Err(e) => {
                    if !matches!(e, ChannelError::Disconnected) {
                        host_log(&format!("closing the channel: {e}"));
                    }
                    self.close(&mut self.lock());
                    return false;
                }
            }
        }
    }
}
