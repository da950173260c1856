//! The controller run inside the test process, as the end-to-end tests run it: started on a
//! task with the given options, stopped through its shutdown future.

use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};

/// A controller running in this process. Dropping it (also on a failed assertion) stops it.
pub struct InProcessController {
    /// The port its `/metrics`, `/healthz` and `/readyz` are served on (loopback).
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    /// The task running `zetaback::controller::run`: it ends with that function's result.
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl InProcessController {
    /// Starts `zetaback::controller::run(client, options, …)` on a task.
    pub fn start(client: kube::Client, options: zetaback::controller::Options) -> Self {
        let port = options.metrics_addr.port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(zetaback::controller::run(client, options, async {
            let _ = stopped.await;
        }));
        Self {
            port,
            stop: Some(stop),
            task,
        }
    }

    /// Asks it to shut down (as on SIGTERM), without waiting.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Asks it to shut down and waits until it ended; its result.
    pub async fn stop(mut self) -> Result<anyhow::Result<()>, JoinError> {
        self.request_stop();
        (&mut self.task).await
    }

    /// Stops it and checks that it ended without an error.
    pub async fn stop_cleanly(self) {
        self.stop()
            .await
            .expect("join")
            .expect("controller ends cleanly");
    }
}

impl Drop for InProcessController {
    fn drop(&mut self) {
        self.request_stop();
        self.task.abort();
    }
}
