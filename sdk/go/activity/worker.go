package activity

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// Budgets of the worker's requests, as the Rust SDK's.
const (
	requestTimeout     = 10 * time.Second // longest wait for one request
	startupBudget      = 30 * time.Second // how long the first read is retried
	reportBudget       = 60 * time.Second // how long the outcome is retried
	defaultGracePeriod = 30 * time.Second
)

// activityObject is the part of an Activity the worker reads.
type activityObject struct {
	Metadata struct {
		CreationTimestamp string  `json:"creationTimestamp"`
		DeletionTimestamp *string `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		Input                   json.RawMessage `json:"input"`
		HeartbeatTimeout        string          `json:"heartbeatTimeout"`
		CancellationGracePeriod string          `json:"cancellationGracePeriod"`
		StartToCloseTimeout     string          `json:"startToCloseTimeout"`
		ScheduleToCloseTimeout  string          `json:"scheduleToCloseTimeout"`
		StartDelay              string          `json:"startDelay"`
		CancelRequested         bool            `json:"cancelRequested"`
		Paused                  bool            `json:"paused"`
		Reset                   *struct {
			RequestedAt string `json:"requestedAt"`
		} `json:"reset"`
		RetryPolicy *struct {
			MaximumAttempts int32 `json:"maximumAttempts"`
		} `json:"retryPolicy"`
	} `json:"spec"`
	Status *struct {
		Attempt          *int32          `json:"attempt"`
		HeartbeatDetails json.RawMessage `json:"heartbeatDetails"`
		StartedTime      string          `json:"startedTime"`
		LastReset        *struct {
			RequestedAt string `json:"requestedAt"`
			Time        string `json:"time"`
		} `json:"lastReset"`
	} `json:"status"`
}

// cancelIn is the stop an Activity read from the API server asks for ("" for none). Cancel beats
// a changed attempt; then reset beats pause, as the contract orders them.
func cancelIn(a *activityObject, attempt int32) Cause {
	if a.Metadata.DeletionTimestamp != nil || a.Spec.CancelRequested {
		return CauseCanceled
	}
	var lastReset string
	if a.Status != nil {
		if a.Status.Attempt != nil && *a.Status.Attempt != attempt {
			return CauseSuperseded
		}
		if a.Status.LastReset != nil {
			lastReset = a.Status.LastReset.RequestedAt
		}
	}
	if a.Spec.Reset != nil && a.Spec.Reset.RequestedAt != "" && a.Spec.Reset.RequestedAt != lastReset {
		return CauseReset
	}
	if a.Spec.Paused {
		return CausePaused
	}
	return ""
}

func parseDuration(field, value string) (time.Duration, error) {
	if value == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		return 0, fmt.Errorf("invalid spec.%s %q in the Activity: %w", field, value, err)
	}
	return d, nil
}

func parseTime(value string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, value)
	if err != nil {
		return time.Time{}
	}
	return t
}

func forbiddenMessage(verb, res, namespace, name, message string) string {
	return fmt.Sprintf("forbidden: cannot %s %s of Activity %s/%s: %s. The worker's service account needs the Role "+
		"`activity-worker` (verbs: get on activities, patch on activities/status, apiGroup heartbeat.dev) bound in "+
		"namespace %s: see worker-image/rbac/worker-role.yaml", verb, res, namespace, name, message, namespace)
}

// worker is the state of one attempt, shared by the activity and the heartbeat sender.
type worker struct {
	client          rest.Interface
	name, namespace string
	attempt         int32
	info            Info
	input           json.RawMessage
	previous        json.RawMessage
	log             *slog.Logger

	mu        sync.Mutex // guards thr, causeV, fatalMsg, cancelFn
	thr       *throttle
	causeV    Cause
	fatalMsg  string
	cancelFn  context.CancelCauseFunc
	cancelled chan struct{}

	wake     chan struct{} // buffered 1: a heartbeat was recorded
	stop     chan struct{} // closed: the sender stops
	stopOnce sync.Once
	sendMu   sync.Mutex // serializes the sender's PATCHes and the outcome's
	done     chan struct{}
}

func newWorker(client rest.Interface, namespace, name string, attempt int32, a *activityObject, log *slog.Logger) (*worker, error) {
	hb, err := parseDuration("heartbeatTimeout", a.Spec.HeartbeatTimeout)
	if err != nil {
		return nil, err
	}
	grace, err := parseDuration("cancellationGracePeriod", a.Spec.CancellationGracePeriod)
	if err != nil {
		return nil, err
	}
	if a.Spec.CancellationGracePeriod == "" {
		grace = defaultGracePeriod
	}
	s2c, err := parseDuration("scheduleToCloseTimeout", a.Spec.ScheduleToCloseTimeout)
	if err != nil {
		return nil, err
	}
	s2cl, err := parseDuration("startToCloseTimeout", a.Spec.StartToCloseTimeout)
	if err != nil {
		return nil, err
	}
	if s2cl == 0 {
		s2cl = s2c
	}
	delay, err := parseDuration("startDelay", a.Spec.StartDelay)
	if err != nil {
		return nil, err
	}
	w := &worker{
		client: client, name: name, namespace: namespace, attempt: attempt, log: log,
		input: a.Spec.Input, thr: newThrottle(hb),
		cancelled: make(chan struct{}), wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	started := time.Now()
	var clockStart time.Time
	if a.Status != nil {
		w.previous = a.Status.HeartbeatDetails
		if t := parseTime(a.Status.StartedTime); !t.IsZero() {
			started = t
		}
		if a.Status.LastReset != nil {
			clockStart = parseTime(a.Status.LastReset.Time)
		}
	}
	if created := parseTime(a.Metadata.CreationTimestamp); clockStart.IsZero() && !created.IsZero() {
		clockStart = created.Add(delay)
	}
	w.info = Info{Name: name, Namespace: namespace, Attempt: attempt, HeartbeatTimeout: max(hb, 0),
		HeartbeatInterval: w.thr.interval, CancellationGracePeriod: grace, StartedTime: started}
	if a.Spec.RetryPolicy != nil {
		w.info.MaximumAttempts = a.Spec.RetryPolicy.MaximumAttempts
	}
	if s2cl > 0 {
		w.info.Deadline = started.Add(s2cl)
	}
	if s2c > 0 && !clockStart.IsZero() {
		w.info.ScheduleToCloseDeadline = clockStart.Add(s2c)
	}
	resume := "none"
	if len(w.previous) > 0 {
		resume = string(w.previous)
	}
	log.Info("starting attempt", "activity", namespace+"/"+name, "attempt", attempt,
		"heartbeatInterval", w.thr.interval.String(), "resumeFrom", resume)
	w.inspect(a)
	return w, nil
}

func (w *worker) cause() Cause {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.causeV
}

func (w *worker) isCancelled() bool {
	select {
	case <-w.cancelled:
		return true
	default:
		return false
	}
}

// cancel tells the activity to stop; the first cause wins.
func (w *worker) cancel(c Cause, message string) {
	w.mu.Lock()
	if w.causeV != "" {
		w.mu.Unlock()
		return
	}
	w.causeV = c
	if c.fatal() {
		w.fatalMsg = message
	}
	fn := w.cancelFn
	close(w.cancelled)
	w.mu.Unlock()
	if c.fatal() {
		w.log.Error("stopping: " + message)
	} else {
		w.log.Info("canceled", "cause", string(c), "message", message)
	}
	if fn != nil {
		fn(&CanceledError{Cause: c, Message: message})
	}
}

// bind makes ctx the activity's context: canceled with the worker (at once if it already was).
func (w *worker) bind(cancel context.CancelCauseFunc) {
	w.mu.Lock()
	w.cancelFn = cancel
	c, msg := w.causeV, w.fatalMsg
	w.mu.Unlock()
	if c != "" {
		cancel(&CanceledError{Cause: c, Message: msg})
	}
}

func (w *worker) inspect(a *activityObject) {
	if c := cancelIn(a, w.attempt); c != "" {
		w.cancel(c, "")
	}
}

func (w *worker) record(p pending) {
	w.mu.Lock()
	w.thr.record(p)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) timeout() time.Duration {
	if hb := w.info.HeartbeatTimeout; hb > 0 {
		return min(max(hb, time.Second), requestTimeout)
	}
	return requestTimeout
}

// get reads the Activity once.
func (w *worker) get(ctx context.Context) (*activityObject, *apiFailure) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	return decodeReply(w.client.Get().Namespace(w.namespace).Resource(resource).Name(w.name).MaxRetries(0).Do(ctx))
}

// patchOnce sends one JSON Patch of activities/status with the worker's field manager.
func (w *worker) patchOnce(body []byte) (*activityObject, *apiFailure) {
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout())
	defer cancel()
	return decodeReply(w.client.Patch(types.JSONPatchType).Namespace(w.namespace).Resource(resource).Name(w.name).
		SubResource("status").Param("fieldManager", FieldManager).Body(body).MaxRetries(0).Do(ctx))
}

func decodeReply(res rest.Result) (*activityObject, *apiFailure) {
	raw, err := res.Raw()
	if err != nil {
		// Result.Error decodes a Status body (its code, details.causes, retryAfterSeconds);
		// Raw's error is a generic one built from the status code alone.
		if e := res.Error(); e != nil {
			err = e
		}
		f := classify(err)
		return nil, &f
	}
	var a activityObject
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, &apiFailure{kind: fatal, message: "cannot decode the Activity: " + err.Error()}
	}
	return &a, nil
}

// connect reads the Activity, retrying transient errors for up to 30 s.
func connect(ctx context.Context, client rest.Interface, namespace, name string, attempt int32, log *slog.Logger) (*worker, error) {
	probe := &worker{client: client, namespace: namespace, name: name}
	start := time.Now()
	for failures := 1; ; failures++ {
		a, f := probe.get(ctx)
		if f == nil {
			return newWorker(client, namespace, name, attempt, a, log)
		}
		switch f.kind {
		case forbidden:
			return nil, fmt.Errorf("%s", forbiddenMessage("get", "activities", namespace, name, f.message))
		case notFound:
			return nil, fmt.Errorf("Activity %s/%s does not exist: %s", namespace, name, f.message)
		case retryable:
		default:
			return nil, fmt.Errorf("cannot read Activity %s/%s: %s", namespace, name, f.message)
		}
		elapsed := time.Since(start)
		if elapsed >= startupBudget {
			return nil, fmt.Errorf("gave up after %s trying to read Activity %s/%s; last error: %s",
				elapsed.Round(time.Millisecond), namespace, name, f.message)
		}
		wait := f.retryAfter
		if wait <= 0 {
			wait = backoff(failures)
		}
		wait = min(wait, startupBudget-elapsed)
		log.Warn("cannot read the Activity yet", "retryIn", wait.String(), "error", f.message)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// react acts on a failure that stops the worker and says whether it did.
func (w *worker) react(f *apiFailure) bool {
	switch f.kind {
	case superseded:
		w.log.Warn("write refused: status.attempt is no longer ours", "attempt", w.attempt, "error", f.message)
		w.cancel(CauseSuperseded, f.message)
	case notFound:
		w.log.Warn("write refused: the Activity is gone", "error", f.message)
		w.cancel(CauseNotFound, f.message)
	case forbidden:
		w.cancel(CauseForbidden, forbiddenMessage("patch", "activities/status", w.namespace, w.name, f.message))
	default:
		return false
	}
	return true
}

// sender sends heartbeats when the throttle says they are due.
func (w *worker) sender() {
	defer close(w.done)
	for {
		w.mu.Lock()
		at, ok := w.thr.due()
		w.mu.Unlock()
		if ok && time.Until(at) <= 0 {
			if !w.sendDue() {
				return
			}
			continue
		}
		var timer *time.Timer
		var fire <-chan time.Time // nil (never) while nothing is pending
		if ok {
			timer = time.NewTimer(time.Until(at))
			fire = timer.C
		}
		var stopped, woken bool
		select {
		case <-w.stop:
			stopped = true
		case <-w.wake:
			woken = true
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
		if stopped {
			return
		}
		if !woken && !w.sendDue() {
			return
		}
	}
}

// sendDue sends the due details, if any; false when the sender must stop.
func (w *worker) sendDue() bool {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	select {
	case <-w.stop:
		return false
	default:
	}
	sentAt := time.Now()
	w.mu.Lock()
	p := w.thr.takeDue(sentAt)
	w.mu.Unlock()
	if p == nil {
		return true
	}
	body, err := heartbeatPatch(w.attempt, time.Now(), p)
	if err != nil {
		w.log.Error("heartbeat dropped", "error", err)
		return true
	}
	a, f := w.patchOnce(body)
	if f == nil {
		w.mu.Lock()
		w.thr.delivered(sentAt)
		w.mu.Unlock()
		w.inspect(a)
		return true
	}
	if w.react(f) {
		return false
	}
	if f.kind == fatal {
		// Not retried (the same patch would be refused again); the next details may pass.
		w.log.Error("heartbeat refused by the API server, dropped", "error", f.message)
		return true
	}
	now := time.Now()
	w.mu.Lock()
	retryAt, giveUp, undelivered := w.thr.failed(p, sentAt, now, f.retryAfter)
	w.mu.Unlock()
	if giveUp {
		w.cancel(CauseHeartbeatUndeliverable, fmt.Sprintf("heartbeat of Activity %s/%s could not be delivered for %s, "+
			"longer than the heartbeat timeout %s; stopping (last error: %s)", w.namespace, w.name,
			undelivered.Round(100*time.Millisecond), w.info.HeartbeatTimeout, f.message))
		return false
	}
	w.log.Warn("heartbeat not delivered", "retryIn", retryAt.Sub(now).Round(time.Millisecond).String(), "error", f.message)
	return true
}

func (w *worker) stopSender() {
	w.stopOnce.Do(func() { close(w.stop) })
}

// refusal is the exit code and message when the cause forbids further writes.
func (w *worker) refusal() (code int, message string, refused bool) {
	w.mu.Lock()
	c, msg := w.causeV, w.fatalMsg
	w.mu.Unlock()
	switch {
	case c == CauseSuperseded:
		return ExitCanceled, fmt.Sprintf("attempt %d of Activity %s/%s is superseded; its writes are refused", w.attempt, w.namespace, w.name), true
	case c == CauseNotFound:
		return ExitCanceled, fmt.Sprintf("Activity %s/%s does not exist any more", w.namespace, w.name), true
	case c.fatal():
		return ExitFailure, msg, true
	}
	return 0, "", false
}

func (w *worker) logRefusal(code int, msg string) {
	if code == ExitFailure {
		w.log.Error("outcome not written: " + msg)
	} else {
		w.log.Warn("outcome not written: " + msg)
	}
}

// report flushes the pending details and writes the outcome in one PATCH, retrying 409/429/5xx
// for up to 60 s, and returns the process exit code.
func (w *worker) report(o *outcome, exitCode int) int {
	w.stopSender()
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	if code, msg, refused := w.refusal(); refused {
		w.logRefusal(code, msg)
		return code
	}
	w.mu.Lock()
	flushed := w.thr.takePending()
	w.mu.Unlock()
	start := time.Now()
	for failures := 1; ; failures++ {
		body, err := outcomePatch(w.attempt, time.Now(), flushed, o)
		if err != nil {
			w.log.Error("outcome not written", "error", err)
			return ExitFailure
		}
		_, f := w.patchOnce(body)
		if f == nil {
			w.log.Info("reported outcome", "attempt", w.attempt, "succeeded", o.Succeeded, "canceled", o.Canceled)
			return exitCode
		}
		if w.react(f) {
			code, msg, _ := w.refusal()
			w.logRefusal(code, msg)
			return code
		}
		if f.kind == fatal {
			w.log.Error("outcome not written: refused by the API server", "error", f.message)
			return exitCode
		}
		elapsed := time.Since(start)
		if elapsed >= reportBudget {
			w.log.Error("outcome not written", "after", elapsed.String(), "error", f.message)
			return exitCode
		}
		wait := f.retryAfter
		if wait <= 0 {
			wait = backoff(failures)
		}
		wait = min(wait, reportBudget-elapsed)
		w.log.Warn("cannot report the outcome yet", "retryIn", wait.String(), "error", f.message)
		time.Sleep(wait)
	}
}
