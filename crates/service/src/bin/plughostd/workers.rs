//! Connection threads, kept for reuse: a thread that finished a connection waits a while for the
//! next one instead of exiting. Starting and ending a thread per connection cost the daemon most of
//! its control-socket throughput on a 2-CPU machine: every thread exit gives back its stack
//! (`madvise`), and in a process running on both CPUs that is a TLB shootdown, an interrupt to the
//! other CPU, each time (BENCHMARKS.md, "control_rps").
//!
//! Every connection still gets a thread of its own at once (an idle one, or a new one): a request
//! that takes long (`exec` waits for its program) never holds up another. The admission limits of
//! `server.rs` bound how many run at a time; idle threads end after [`IDLE_KEEP`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread with no connection waits for the next one before it ends.
const IDLE_KEEP: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce() + Send>;

pub struct Workers {
    name: &'static str,
    /// Leaf lock: held only to queue or take a job, never while one runs.
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Threads started so far.
    started: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
}

impl Workers {
    pub fn new(name: &'static str) -> Arc<Workers> {
        Arc::new(Workers {
            name,
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            started: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere leaves the queue consistent (each change is one push, pop or count).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on a thread of its own: an idle one, or a new one when every idle thread already
    /// has a job coming. Fails only when no thread is idle and none can be started.
    pub fn run(self: &Arc<Self>, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut queue = self.lock();
        if queue.idle > queue.jobs.len() {
            queue.jobs.push_back(Box::new(job));
            drop(queue);
            self.ready.notify_one();
            return Ok(());
        }
        drop(queue);
        let workers = self.clone();
        self.started.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || {
                job();
                workers.work();
            })
            .map(drop)
    }

    /// Takes the jobs queued for idle threads until none comes for [`IDLE_KEEP`].
    fn work(&self) {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                drop(queue);
                job();
                queue = self.lock();
                continue;
            }
            queue.idle += 1;
            let (guard, wait) = self
                .ready
                .wait_timeout(queue, IDLE_KEEP)
                .unwrap_or_else(|e| e.into_inner());
            queue = guard;
            queue.idle -= 1;
            if wait.timed_out() && queue.jobs.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn every_job_runs_once_and_threads_are_reused() {
        let workers = Workers::new("test-worker");
        let ran = Arc::new(AtomicUsize::new(0));
        let (done, finished) = mpsc::channel();
        for round in 0..50 {
            for _ in 0..8 {
                let ran = ran.clone();
                let done = done.clone();
                workers
                    .run(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                        let _ = done.send(std::thread::current().id());
                    })
                    .expect("run");
            }
            for _ in 0..8 {
                finished.recv().expect("a job finished");
            }
            assert_eq!(ran.load(Ordering::SeqCst), (round + 1) * 8);
        }
        // At most one thread per job; fewer when a thread was idle again before the next `run`
        // (a fast job on a busy machine).
        let started = workers.started.load(Ordering::Relaxed);
        assert!((1..=400).contains(&started), "{started} threads");
        // One job at a time, each once a thread is idle: no new thread is started.
        for round in 0..20 {
            while workers.lock().idle == 0 {
                std::thread::yield_now();
            }
            let done = done.clone();
            workers
                .run(move || {
                    let _ = done.send(std::thread::current().id());
                })
                .expect("run");
            finished
                .recv()
                .unwrap_or_else(|e| panic!("job {round}: {e}"));
        }
        assert_eq!(workers.started.load(Ordering::Relaxed), started);
    }

    #[test]
    fn a_long_job_does_not_hold_up_the_next() {
        let workers = Workers::new("test-worker");
        for round in 0..50 {
            let (release, blocked) = mpsc::channel::<()>();
            let (started, running) = mpsc::channel();
            workers
                .run(move || {
                    let _ = started.send(());
                    let _ = blocked.recv();
                })
                .expect("run the long job");
            running.recv().expect("the long job started");
            let (done, finished) = mpsc::channel();
            workers
                .run(move || {
                    let _ = done.send(());
                })
                .expect("run the short job");
            finished
                .recv()
                .unwrap_or_else(|e| panic!("round {round}: the short job did not run: {e}"));
            release.send(()).expect("release the long job");
        }
    }
}
