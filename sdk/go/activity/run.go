package activity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"runtime/debug"
	"strconv"
	"syscall"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Exit codes of a worker process, as the Rust worker's.
const (
	// ExitSuccess: the activity succeeded.
	ExitSuccess = 0
	// ExitFailure: the activity failed, or the worker could not run (missing permission,
	// heartbeats undeliverable, no Activity at start).
	ExitFailure = 1
	// ExitCanceled: the worker stopped on a cancellation (also superseded or gone); 128 + SIGTERM.
	ExitCanceled = 143
)

// The environment the operator sets on every container of a worker pod.
const (
	EnvName      = "ACTIVITY_NAME"
	EnvNamespace = "ACTIVITY_NAMESPACE"
	EnvAttempt   = "ACTIVITY_ATTEMPT"
)

// Options configure Execute. The zero Options read everything from the environment.
type Options struct {
	// Name, Namespace and Attempt of the Activity; default ACTIVITY_NAME, ACTIVITY_NAMESPACE, ACTIVITY_ATTEMPT.
	Name, Namespace string
	Attempt         int32
	// Config of the API connection; default: KUBECONFIG when set, else the pod's service
	// account, else ~/.kube/config.
	Config *rest.Config
	// Logger; default slog.Default().
	Logger *slog.Logger
	// HandleSignals makes SIGTERM and SIGINT cancel the activity (CauseSignal). Run sets it.
	HandleSignals bool
}

// Run runs one attempt of the activity fn in this process and exits with its exit code (see
// Execute). fn is a function like a Temporal activity: its first parameter is a
// context.Context, the others are decoded from spec.input (one parameter: the whole input;
// several: the elements of a JSON array), and it returns an error or a result and an error.
func Run(fn any) {
	os.Exit(Execute(context.Background(), fn, Options{HandleSignals: true}))
}

// Execute runs one attempt of fn and returns the process exit code: ExitSuccess, ExitFailure
// (a failure, or a fatal error), ExitCanceled. It reads the Activity, starts the heartbeat
// sender, runs fn with a context that is canceled when the worker must stop (see CancelCause),
// and writes the attempt's outcome: the result, the failure (an *ApplicationError gives its type,
// non-retryability and next retry delay; other errors their Go type), or canceled when fn
// returns an error matching context.Canceled after the context was canceled.
func Execute(parent context.Context, fn any, opts Options) int {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	w, ctx, cancel, err := start(parent, fn, &opts, log)
	if err != nil {
		log.Error("cannot start the worker: " + err.Error())
		return ExitFailure
	}
	defer cancel(nil)
	go w.sender()
	if opts.HandleSignals {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(signals)
		stopWatch := make(chan struct{})
		defer close(stopWatch)
		go func() {
			select {
			case s := <-signals:
				w.cancel(CauseSignal, "received "+s.String())
			case <-stopWatch:
			}
		}()
	}
	o, code := invoke(ctx, w, fn)
	code = w.report(o, code)
	w.stopSender()
	<-w.done
	return code
}

var (
	contextType = reflect.TypeFor[context.Context]()
	errorType   = reflect.TypeFor[error]()
)

func checkSignature(fn any) error {
	ft := reflect.TypeOf(fn)
	if ft == nil || ft.Kind() != reflect.Func {
		return fmt.Errorf("the activity must be a function, not %T", fn)
	}
	if ft.NumIn() < 1 || ft.In(0) != contextType || ft.IsVariadic() {
		return fmt.Errorf("the activity %s must take a context.Context first (and no variadic parameter)", ft)
	}
	if ft.NumOut() < 1 || ft.NumOut() > 2 || ft.Out(ft.NumOut()-1) != errorType {
		return fmt.Errorf("the activity %s must return error or (result, error)", ft)
	}
	return nil
}

func start(parent context.Context, fn any, o *Options, log *slog.Logger) (*worker, context.Context, context.CancelCauseFunc, error) {
	if err := checkSignature(fn); err != nil {
		return nil, nil, nil, err
	}
	name, namespace, attempt := o.Name, o.Namespace, o.Attempt
	var err error
	if name == "" {
		if name, err = env(EnvName); err != nil {
			return nil, nil, nil, err
		}
	}
	if namespace == "" {
		if namespace, err = env(EnvNamespace); err != nil {
			return nil, nil, nil, err
		}
	}
	if attempt == 0 {
		raw, err := env(EnvAttempt)
		if err != nil {
			return nil, nil, nil, err
		}
		n, err := strconv.ParseInt(raw, 10, 32)
		if err != nil || n < 1 {
			return nil, nil, nil, fmt.Errorf("environment variable %s=%q is not an attempt number ≥ 1", EnvAttempt, raw)
		}
		attempt = int32(n)
	}
	cfg := o.Config
	if cfg == nil {
		if cfg, err = LoadConfig(); err != nil {
			return nil, nil, nil, fmt.Errorf("cannot configure the Kubernetes client (set KUBECONFIG, or run in a pod with a service account): %w", err)
		}
	}
	client, err := restClient(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	w, err := connect(parent, client, namespace, name, attempt, log)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithCancelCause(context.WithValue(parent, ctxKey{}, w))
	w.bind(cancel)
	return w, ctx, cancel, nil
}

func env(name string) (string, error) {
	if v := os.Getenv(name); v != "" {
		return v, nil
	}
	return "", fmt.Errorf("environment variable %s is not set (the operator sets it on every container of a worker pod)", name)
}

// LoadConfig returns the API connection like kubectl's: KUBECONFIG when set, else the pod's
// service account, else ~/.kube/config.
func LoadConfig() (*rest.Config, error) {
	if os.Getenv("KUBECONFIG") == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return rest.InClusterConfig()
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
}

// restClient is a client of heartbeat.dev/v1alpha1 that decodes API errors as metav1.Status.
func restClient(c *rest.Config) (rest.Interface, error) {
	cfg := rest.CopyConfig(c)
	cfg.APIPath = "/apis"
	cfg.GroupVersion = &schema.GroupVersion{Group: group, Version: version}
	scheme := runtime.NewScheme()
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if cfg.UserAgent == "" {
		cfg.UserAgent = "activity-worker-go"
	}
	client, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot make the Kubernetes client: %w", err)
	}
	return client, nil
}

// panicError is a panic of the activity, reported as a failure of type PanicError.
type panicError struct{ value any }

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// call decodes the inputs, calls fn and recovers a panic.
func call(ctx context.Context, w *worker, fn any) (result any, err error) {
	fv := reflect.ValueOf(fn)
	ft := fv.Type()
	args := []reflect.Value{reflect.ValueOf(ctx)}
	input := w.input
	if len(input) == 0 {
		input = json.RawMessage("null")
	}
	var items []json.RawMessage
	if ft.NumIn() > 2 {
		if err := json.Unmarshal(input, &items); err != nil {
			return nil, NewNonRetryableApplicationError(fmt.Sprintf("spec.input must be a JSON array of %d values", ft.NumIn()-1), "InputError", err)
		}
	}
	for i := 1; i < ft.NumIn(); i++ {
		v := reflect.New(ft.In(i))
		raw := input
		if ft.NumIn() > 2 {
			raw = json.RawMessage("null")
			if i-1 < len(items) {
				raw = items[i-1]
			}
		}
		if err := json.Unmarshal(raw, v.Interface()); err != nil {
			return nil, NewNonRetryableApplicationError("cannot decode spec.input", "InputError", err)
		}
		args = append(args, v.Elem())
	}
	defer func() {
		if r := recover(); r != nil {
			w.log.Error("the activity panicked", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			result, err = nil, &panicError{value: r}
		}
	}()
	out := fv.Call(args)
	if e, _ := out[len(out)-1].Interface().(error); e != nil {
		return nil, e
	}
	if len(out) == 2 {
		return out[0].Interface(), nil
	}
	return nil, nil
}

// invoke runs fn and turns what it returned into the outcome and the exit code.
func invoke(ctx context.Context, w *worker, fn any) (*outcome, int) {
	result, err := call(ctx, w, fn)
	o := &outcome{Attempt: w.attempt}
	if err == nil {
		b, perr := toPayload("result", result)
		if perr != nil {
			w.log.Error(perr.Error())
			o.Failure = &failure{Type: "ResultTooLarge", Message: perr.Error(), NonRetryable: true}
			return o, ExitFailure
		}
		o.Succeeded = true
		if string(b) != "null" {
			o.Result = b
		}
		return o, ExitSuccess
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		o.Canceled = true
		if c := w.cause(); c == CauseCanceled || c == CausePaused || c == CauseReset {
			o.Cause = c
		}
		return o, ExitCanceled
	}
	var app *ApplicationError
	var pe *panicError
	switch {
	case errors.As(err, &app):
		o.Failure = &failure{Type: app.Type(), Message: app.Error(), NonRetryable: app.NonRetryable()}
		if d := app.NextRetryDelay(); d > 0 {
			o.Failure.NextRetryDelay = d.String()
		}
	case errors.As(err, &pe):
		o.Failure = &failure{Type: "PanicError", Message: pe.Error()}
	default:
		o.Failure = &failure{Type: fmt.Sprintf("%T", err), Message: err.Error()}
	}
	return o, ExitFailure
}
