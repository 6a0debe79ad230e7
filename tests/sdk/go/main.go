// Test client for aws-sdk-go-v2: creates ONE STS client from the default
// config/credential chain (as an app in a pod would) and calls
// sts:GetCallerIdentity --count times, --interval-ms apart.
// Prints "OK <arn> <access_key_id>" or "ERR <message>" per call; exit 0 iff all OK.
// <access_key_id> is read from the SigV4 Authorization header of the request
// that was sent, so it is the key the SDK signed that call with; asking the
// credentials provider instead could itself trigger a refresh.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// keyFromAuth returns the access key id in a SigV4 Authorization header
// ("AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request, ...").
func keyFromAuth(auth string) string {
	i := strings.Index(auth, "Credential=")
	if i < 0 {
		return "-"
	}
	rest := auth[i+len("Credential="):]
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		return rest[:j]
	}
	return "-"
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(fmt.Sprintf("%T: %v", err, err)), " ")
}

func main() {
	count := flag.Int("count", 1, "number of GetCallerIdentity calls")
	interval := flag.Int("interval-ms", 0, "milliseconds between calls")
	flag.Parse()

	// Test machines have no instance metadata service and must not send traffic
	// to 169.254.169.254: unless the caller says otherwise, keep the chain's IMDS
	// step off (it is the last step, after env, profile files and containers).
	if _, set := os.LookupEnv("AWS_EC2_METADATA_DISABLED"); !set {
		os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fmt.Printf("ERR %s\n", oneLine(err))
		os.Exit(1)
	}
	// Records the key of each signed request; the Deserialize step runs after
	// signing (Finalize step), once per attempt.
	usedKey := "-"
	capture := middleware.DeserializeMiddlewareFunc("kaicCaptureAccessKey",
		func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
			middleware.DeserializeOutput, middleware.Metadata, error) {
			if req, ok := in.Request.(*smithyhttp.Request); ok {
				usedKey = keyFromAuth(req.Header.Get("Authorization"))
			}
			return next.HandleDeserialize(ctx, in)
		})
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
			return stack.Deserialize.Add(capture, middleware.After)
		})
	})

	failed := false
	for i := 0; i < *count; i++ {
		if i > 0 && *interval > 0 {
			time.Sleep(time.Duration(*interval) * time.Millisecond)
		}
		usedKey = "-"
		out, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			fmt.Printf("ERR %s\n", oneLine(err))
			failed = true
		} else {
			fmt.Printf("OK %s %s\n", aws.ToString(out.Arn), usedKey)
		}
		os.Stdout.Sync()
	}
	if failed {
		os.Exit(1)
	}
}
