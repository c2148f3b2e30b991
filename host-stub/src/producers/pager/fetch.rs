//! The fetchers: a pool of threads that make pages "arrive" after their latency, modelling a
//! disk or a network (postcopy). Jobs are ordered by deadline, so any number of fetches are in
//! flight at once and each completes close to `submitted + latency`; the pool size bounds only
//! how many completions run at the same moment.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a worker calls when a job's deadline passes.
pub type Complete = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Default)]
struct Queue {
    jobs: BinaryHeap<Reverse<(Instant, u64)>>,
    shutdown: bool,
}

struct PoolShared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The fetcher threads.
pub struct FetchPool {
    shared: Arc<PoolShared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FetchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchPool").field("workers", &self.workers.len()).finish_non_exhaustive()
    }
}

impl FetchPool {
    /// Starts `workers` threads that call `complete(page)` when a page's time comes.
    pub fn start(workers: NonZeroUsize, complete: Complete) -> std::io::Result<Self> {
        let shared = Arc::new(PoolShared { queue: Mutex::new(Queue::default()), wake: Condvar::new() });
        let mut handles = Vec::new();
        for i in 0..workers.get() {
            let (shared, complete) = (shared.clone(), complete.clone());
            let handle = std::thread::Builder::new()
                .name(format!("pnp-fetch-{i}"))
                .spawn(move || worker(&shared, &*complete))?;
            handles.push(handle);
        }
        Ok(Self { shared, workers: handles })
    }

    /// Queues `page` to complete after `latency`.
    pub fn submit(&self, page: u64, latency: Duration) {
        self.submitter().submit(page, latency);
    }

    /// A handle that queues fetches, for code that cannot own the pool (the pager's other
    /// threads, through its shared state). Harmless once the pool has stopped.
    pub fn submitter(&self) -> Submitter {
        Submitter(self.shared.clone())
    }
}

/// Queues fetches on a [`FetchPool`].
#[derive(Clone)]
pub struct Submitter(Arc<PoolShared>);

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").finish_non_exhaustive()
    }
}

impl Submitter {
    /// Queues `page` to complete after `latency`.
    pub fn submit(&self, page: u64, latency: Duration) {
        let due = Instant::now() + latency;
        let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.jobs.push(Reverse((due, page)));
        drop(queue);
        self.0.wake.notify_one();
    }
}

fn worker(shared: &PoolShared, complete: &(dyn Fn(u64) + Send + Sync)) {
    // Sleep precisely: the default 50 us timer slack would be as long as the shortest latency.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    loop {
        let page = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if queue.shutdown {
                    return;
                }
                let now = Instant::now();
                match queue.jobs.peek() {
                    Some(Reverse((due, page))) if *due <= now => {
                        let page = *page;
                        queue.jobs.pop();
                        break page;
                    }
                    Some(Reverse((due, _))) => {
                        let wait = *due - now;
                        queue = shared.wake.wait_timeout(queue, wait).unwrap_or_else(|p| p.into_inner()).0;
                    }
                    None => queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        // Another worker may now take the next due job while this one completes.
        shared.wake.notify_one();
        complete(page);
    }
}

impl Drop for FetchPool {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()).shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_complete_in_deadline_order_and_never_early() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        // One worker: overdue jobs then still complete one by one in deadline order.
        let pool = FetchPool::start(
            NonZeroUsize::MIN,
            Arc::new(move |page| tx.lock().unwrap().send((page, Instant::now())).unwrap()),
        )
        .unwrap();
        let start = Instant::now();
        pool.submit(1, Duration::from_millis(40));
        pool.submit(2, Duration::from_millis(10));
        for page in 3..8 {
            pool.submit(page, Duration::from_millis(20));
        }
        let done: Vec<(u64, Instant)> = (0..7).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(done[0].0, 2);
        assert_eq!(done[6].0, 1);
        // Each job completes at or after its deadline; how much later depends on the machine.
        for (page, at) in done {
            let latency = match page {
                1 => 40,
                2 => 10,
                _ => 20,
            };
            assert!(at - start >= Duration::from_millis(latency), "page {page} completed early");
        }
    }

    #[test]
    fn a_job_is_not_queued_behind_a_later_deadline() {
        // One worker: if jobs ran in submission order, the 10 ms job would wait for the 10 s one.
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let pool =
            FetchPool::start(NonZeroUsize::MIN, Arc::new(move |page| tx.lock().unwrap().send(page).unwrap())).unwrap();
        pool.submit(1, Duration::from_secs(10));
        pool.submit(2, Duration::from_millis(10));
        assert_eq!(rx.recv().unwrap(), 2);
        drop(pool);
        assert!(rx.try_recv().is_err(), "the far job was dropped at shutdown, not run");
    }
}
