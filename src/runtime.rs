//! A Tokio runtime on a thread of its own, for work that must be scheduled by the OS beside the
//! server's threads instead of queueing behind connections on the same worker: the event batcher
//! ([`crate::stream::batcher`]) and webhook delivery ([`crate::webhook`]).

/// A current-thread runtime running on its own named thread until this is dropped.
pub(crate) struct RuntimeThread {
    pub(crate) handle: tokio::runtime::Handle,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RuntimeThread {
    /// Starts the thread `name` and its runtime (timers and I/O on).
    pub(crate) fn start(name: &str) -> Result<Self, String> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = done_rx.await;
                });
            })
            .map_err(|e| e.to_string())?;
        let handle = handle_rx.recv().map_err(|e| e.to_string())??;
        Ok(Self {
            handle,
            done: Some(done),
        })
    }
}

impl Drop for RuntimeThread {
    /// Ends the runtime: tasks still on it are dropped at their next await.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}
